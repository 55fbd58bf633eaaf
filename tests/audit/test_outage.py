"""Store outage: the backlog grows in Postgres, nothing is lost, status shows the lag, shipping resumes."""

from __future__ import annotations

import json
import time

from appliance.audit.status import audit_status
from tests.support.audit import audit_rig, stop, wait_for
from tests.support.objectstore import ObjectStore


def test_store_outage_backlog_then_resume(store: ObjectStore) -> None:
    with audit_rig(store, audit={"batch_max_events": 200, "batch_max_age_s": 0.5}) as rig:
        process = rig.start_shipper(log_name="outage.log")
        try:
            rig.append(120)
            rig.wait_shipped(120, 60)
            healthy = audit_status(rig.tenant)
            assert healthy["healthy"] and healthy["lag_events"] == 0, healthy
            store.stop()  # by PID
            try:
                rig.append(700)
                time.sleep(3)
                last = rig.append(5)
                assert last == 825
                assert rig.shipped() == 120  # nothing reached the store, nothing was marked shipped
                wait_for(lambda: audit_status(rig.tenant)["error_kind"] == "store", 30, "the outage to be recorded")
                status = audit_status(rig.tenant, max_lag_s=2)
                assert not status["healthy"]
                assert status["lag_events"] == 705 and status["lag_seconds"] >= 3, status
                assert "failing since" in status["detail"] and "store" in status["detail"], status["detail"]
                cli = rig.cli("audit", "status", rig.tenant.id, "--json")
                assert json.loads(cli.stdout)["lag_events"] == 705
                # Every event is still in Postgres, chained.
                report = rig.verify("db")
                assert report.ok and report.db_events == last, report.summary()
            finally:
                store.start()
            rig.wait_shipped(last, 120)
        finally:
            assert stop(process) == 0
        status = audit_status(rig.tenant)
        assert status["healthy"] and status["lag_events"] == 0 and status["error_kind"] is None, status
        assert "object store" in rig.shipper_log("outage.log")
        rig.assert_exactly_once()
        report = rig.verify("both")
        assert report.ok, report.summary()
