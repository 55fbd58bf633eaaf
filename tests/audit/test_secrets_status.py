"""Secrets never show: not in the shipper's command line or environment, not in its log (errors included),
not in what status, verify or the database's error column say. And the status probe plugs into `appliance
status` beside the service's own process status."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.audit.status import audit_probe
from tests.audit.support import AuditRig, stop, wait_for


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


def test_status_probe_plugs_into_appliance_status(rig: AuditRig) -> None:
    rig.append(3)
    components = audit_probe(rig.host, rig.tenant)
    assert list(components) == ["audit_trail"]
    status = components["audit_trail"]
    assert status.healthy and "3 event(s) waiting" in status.detail
    rig.ship_all()
    assert "nothing waiting" in audit_probe(rig.host, rig.tenant)["audit_trail"].detail
    assert json.loads(rig.cli("audit", "status", rig.tenant.id, "--json").stdout)["shipped_seq"] == 3
