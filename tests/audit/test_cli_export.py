"""The operator's commands: verify (exit codes, --json, each source), export for auditors, status."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path

from appliance.audit.chain import GENESIS_HASH
from appliance.audit.verify import line_hash
from tests.support.audit import AuditRig


def _recompute(lines: list[bytes], prev: str) -> str:
    """What an auditor does with the export and canonical.py's recipe, without any of this code's helpers."""
    for raw in lines:
        event = json.loads(raw)
        assert event["prev_hash"] == prev
        body = {k: v for k, v in event.items() if k not in ("hash", "prev_hash")}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert hashlib.sha256(text + bytes.fromhex(prev)).hexdigest() == event["hash"]
        prev = event["hash"]
    return prev


def test_verify_and_export_commands(rig: AuditRig, tmp_path: Path) -> None:
    rig.append(150)
    time.sleep(0.05)
    since = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    rig.append(100)
    assert rig.ship_all(max_events=60) == 250
    rig.append(7)  # not shipped

    for source in ("s3", "db", "both"):
        result = rig.cli("audit", "verify", rig.tenant.id, "--from", source)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "INTACT" in result.stdout
    as_json = json.loads(rig.cli("audit", "verify", rig.tenant.id, "--json").stdout)
    assert as_json["ok"] and as_json["s3_events"] == 250 and as_json["db_events"] == 257
    assert as_json["shipped_seq"] == 250 and as_json["first_break"] is None

    out = tmp_path / "export.jsonl"
    result = rig.cli("audit", "export", rig.tenant.id, "--since", since.isoformat(), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = out.read_bytes().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(151, 251))
    assert "7 later event(s) are not shipped yet" in result.stderr
    _recompute(lines, events[0]["prev_hash"])
    assert all(line_hash(e) == e["hash"] for e in events)

    everything = rig.cli("audit", "export", rig.tenant.id, "--since", "2000-01-01", "--from", "db")
    assert everything.returncode == 0
    all_lines = everything.stdout.encode().splitlines()
    assert len(all_lines) == 257
    _recompute(all_lines, GENESIS_HASH)

    window = rig.cli("audit", "export", rig.tenant.id, "--since", "2000-01-01", "--until", since.isoformat())
    assert [json.loads(line)["seq"] for line in window.stdout.splitlines()] == list(range(1, 151))

    bad = rig.cli("audit", "export", rig.tenant.id, "--since", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    unknown = rig.cli("audit", "verify", "nosuchtenant")
    assert unknown.returncode == 2 and "no tenant" in unknown.stderr

    status = rig.cli("audit", "status", rig.tenant.id)
    assert status.returncode == 0 and "7 event(s) waiting" in status.stdout


def test_verify_reports_an_unreachable_store_as_incomplete(rig: AuditRig) -> None:
    rig.append(10)
    rig.ship_all()
    rig.store.stop()
    try:
        result = rig.cli("audit", "verify", rig.tenant.id, "--from", "s3", timeout=300)
    finally:
        rig.store.start()
    assert result.returncode == 1 and "INCOMPLETE" in result.stdout and "could not be read" in result.stdout
