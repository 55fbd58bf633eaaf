"""Concurrent writers never fork the chain (while the shipper ships); operator actions are recorded through the
tenant's superuser connection as root and shipped like everything else."""

from __future__ import annotations

import threading
import uuid

from appliance.audit.chain import AuditEvent, append_event, append_events
from appliance.audit.db import fetch_range
from appliance.audit.operator import OPERATOR_ACTIONS, record_operator_action, ship_now
from tests.support.audit import AuditRig, stop


def test_concurrent_writers_and_operators_never_fork_the_chain(rig: AuditRig) -> None:
    appended: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        try:
            with rig.gateway_conn() as conn:
                for n in range(60):
                    if n % 3 == 0:
                        # A mutation and its audit row in one transaction, as the gateway writes them.
                        with conn.transaction():
                            conn.execute("SELECT 1")
                            got = [append_event(conn, AuditEvent(f"w{index}", "thing.update", None, f"t:{n}"))]
                    else:
                        got = append_events(conn, [AuditEvent(f"w{index}", "thing.create", uuid.uuid4(), f"t:{n}",
                                                              {"n": n})] * (1 + n % 4))
                    with lock:
                        appended.extend(got)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    def operator() -> None:
        try:
            for action in OPERATOR_ACTIONS * 5:
                seq = record_operator_action(rig.tenant, action, {"why": "test"})
                with lock:
                    appended.append((seq, ""))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    process = rig.start_shipper(log_name="concurrent.log")
    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        threads.append(threading.Thread(target=operator))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        head = rig.head()
        rig.wait_shipped(head)
    finally:
        stop(process)
    seqs = sorted(seq for seq, _ in appended)
    assert seqs == list(range(1, head + 1))  # every append got its own seq, no gaps, no two the same
    with rig.audit_conn() as conn:
        rows = {r.seq: r for r in fetch_range(conn, 1, head)}
    assert all(rows[seq].hash == digest for seq, digest in appended if digest)
    report = rig.verify("both")
    assert report.ok and report.db_events == head == report.s3_events, report.summary()
    rig.assert_exactly_once()


def test_operator_action_is_recorded_as_root_and_shipped_now(rig: AuditRig) -> None:
    rig.append(3)
    seq = record_operator_action(rig.tenant, "tenant_destroy", {"reason": "offboarded"})
    assert seq == 4
    with rig.audit_conn() as conn:
        [row] = fetch_range(conn, 4, 4)
    assert (row.actor, row.action, row.subject) == ("operator", "operator.tenant_destroy", f"tenant:{rig.tenant.id}")
    assert row.detail["reason"] == "offboarded" and row.detail["operator"]["os_user"] == "root"
    # Before destroying, the destroy code makes sure the event is in the store (no shipper running here).
    assert ship_now(rig.host, rig.tenant, seq, timeout_s=60) >= seq
    assert rig.verify("both").ok
    cli = rig.cli("audit", "record", rig.tenant.id, "key_rotation", "--detail", '{"key": "jwt"}')
    assert cli.returncode == 0 and "seq 5" in cli.stdout, cli.stderr
    bad = rig.cli("audit", "record", rig.tenant.id, "deploy", "--detail", '{"ratio": 1.5}')
    assert bad.returncode == 2 and "float" in bad.stderr


def test_ship_now_waits_for_a_running_shipper(rig: AuditRig) -> None:
    process = rig.start_shipper(log_name="running.log")
    try:
        seq = record_operator_action(rig.tenant, "deploy", {"source_digest": "abc"})
        assert ship_now(rig.host, rig.tenant, seq, timeout_s=60) >= seq
    finally:
        stop(process)
