"""Secrets never show: not in the shipper's command line or environment, not in its log (errors included),
not in what status, verify or the database's error column say. And `appliance status` gives the shipper's row
the trail's lag as its health."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.audit.service import audit_service
from appliance.status import component_status
from appliance.supervision import ProcessState
from tests.support.audit import AuditRig, stop, wait_for


def _secrets(rig: AuditRig) -> list[str]:
    values = [path.read_text().strip() for path in rig.tenant.secrets_dir.iterdir() if path.is_file()]
    return [v for v in values if len(v) >= 8]


def test_no_secret_in_argv_environment_logs_errors_or_reports(rig: AuditRig) -> None:
    rig.append(20)
    process = rig.start_shipper(log_name="secrets.log")
    try:
        rig.wait_shipped(20, 60)
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace")
        rig.store.stop()
        try:
            rig.append(5)
            wait_for(lambda: rig.sql("SELECT error FROM audit.shipped")[0][0] is not None, 60, "an error")
            status = rig.cli("audit", "status", rig.tenant.id, "--json")
            verify = rig.cli("audit", "verify", rig.tenant.id, timeout=300)
        finally:
            rig.store.start()
        rig.wait_shipped(25, 60)
    finally:
        stop(process)
    said = {"argv": argv, "environ": environ, "log": rig.shipper_log("secrets.log"),
            "error": str(rig.sql("SELECT error FROM audit.shipped")), "status": status.stdout + status.stderr,
            "verify": verify.stdout + verify.stderr}
    assert "object store" in said["log"]
    for secret in _secrets(rig):
        for where, text in said.items():
            assert secret not in text, f"a secret shows in {where}"


def test_appliance_status_shows_the_trail_lag_as_the_shippers_health(rig: AuditRig) -> None:
    shipper = audit_service(rig.tenant)
    running = ProcessState(running=True, pid=1, uptime_s=5, state="RUNNING")
    rig.append(3)
    status = component_status(shipper, running, rig.host)
    assert status.healthy and "3 event(s) waiting" in status.detail
    rig.ship_all()
    assert "nothing waiting" in component_status(shipper, running, rig.host).detail
    assert json.loads(rig.cli("audit", "status", rig.tenant.id, "--json").stdout)["shipped_seq"] == 3
