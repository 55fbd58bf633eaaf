"""Drills on a real tenant: they pass while the tenant keeps writing, and fail, naming the object, on corruption.

Corrupting a file in the versioned backup bucket means writing a new version of it (what a bit flip in the
store or a tampering hand would leave behind); each corruption test puts the good version back afterwards.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.backup.paths import backup_paths
from appliance.config import BACKUP_S3_KEYS
from appliance.objectstore.client import put_object
from tests.support.backup import Rig, add_house, add_thread, backup_rig

pytestmark = pytest.mark.slow
T = "bktb"


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with backup_rig((T,), product_schema=True) as running:
        with running.connect(T) as conn:
            house = add_house(conn, "drill")
            conn.execute("insert into notes (house_id, body) select %s, repeat('n', 300) || g "
                         "from generate_series(1, 60000) g", (house,))
        for _ in range(4):
            add_thread(running, T, house, 200)
        result = running.cli("backup", T, "--full")
        assert result.returncode == 0, result.stderr
        yield running


class BusyTenant:
    """Writes rows and stream entries for as long as it runs (the drill must not need a quiet tenant)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.stop = threading.Event()
        self.rows = 0
        self.entries = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._rows), threading.Thread(target=self._entries)]

    def _rows(self) -> None:
        with self.rig.connect(T) as conn:
            house = add_house(conn, "busy")
            while not self.stop.is_set():
                try:
                    conn.execute("insert into notes (house_id, body) values (%s, 'busy')", (house,))
                    self.rows += 1
                except Exception as exc:  # recorded: a drill must never make the tenant's writes fail
                    self.errors.append(str(exc))

    def _entries(self) -> None:
        tenant = self.rig.tenant(T)
        url = f"http://127.0.0.1:{tenant.port('streams')}/thread-busy-{uuid.uuid4()}"
        with httpx.Client(timeout=10) as client:
            client.put(url, content=b"[]", headers={"content-type": "application/json"}).raise_for_status()
            while not self.stop.is_set():
                response = client.post(url, content=json.dumps({"n": self.entries}).encode(),
                                       headers={"content-type": "application/json"})
                if response.status_code >= 300:
                    self.errors.append(f"append answered {response.status_code}")
                self.entries += 1

    def __enter__(self) -> BusyTenant:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def drill(rig: Rig) -> tuple[int, dict[str, Any], str]:
    result = rig.cli("drill", T, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def test_drill_passes_on_a_busy_tenant_and_reports_rto_rpo(rig: Rig) -> None:
    with BusyTenant(rig) as busy:
        backup = rig.cli("backup", T)  # taken while writes continue
        assert backup.returncode == 0, backup.stderr
        code, report, err = drill(rig)
    assert not busy.errors, busy.errors[:3]
    assert busy.rows > 100 and busy.entries > 10
    failed = [c for c in report["checks"] if not c["ok"]]
    assert code == 0 and report["ok"], (failed, err)
    names = {c["name"] for c in report["checks"]}
    assert {"restore", "pgbackrest verify", "tables", "markers", "pg_amcheck", "streams", "audit chain"} <= names
    notes = next(t for t in report["tables"] if t["table"] == "rig.notes")
    assert notes["ok"] and notes["source_rows"] >= 60000
    assert report["streams"]["count"] >= 4 and not report["streams"]["mismatches"]
    assert 0 < report["rto_s"] < 180
    assert report["rpo"]["rpo_s"] is not None and report["rpo"]["rpo_s"] <= rig.tenant(T).backup.archive_timeout_s
    assert report["scratch"]["removed"] is True
    assert not list(backup_paths(rig.tenant(T)).scratch_root.glob("*/scratch.json"))
    # The JSON report is kept, and the readable summary says the same.
    kept = Path(report["scratch"]["report"])
    assert json.loads(kept.read_text())["ok"] is True
    summary = rig.cli("drill", T)
    assert summary.returncode == 0 and "DRILL PASSED" in summary.stdout and "RTO" in summary.stdout


def _largest_object(rig: Rig, prefix: str) -> str:
    tenant = rig.tenant(T)
    s3 = rig.store.client(T, BACKUP_S3_KEYS)
    objects = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=tenant.backup_bucket, Prefix=prefix)
               for o in page.get("Contents", [])]
    return str(max(objects, key=lambda o: o["Size"])["Key"])


class Corrupted:
    """A new, bit-flipped version of one object; the good bytes go back as the newest version afterwards."""

    def __init__(self, rig: Rig, key: str) -> None:
        self.rig, self.key = rig, key
        self.bucket = rig.tenant(T).backup_bucket
        self.s3 = rig.store.client(T, BACKUP_S3_KEYS)
        self.good = b""

    def __enter__(self) -> str:
        self.good = self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        bad = bytearray(self.good)
        bad[len(bad) // 2] ^= 0x5A
        put_object(self.s3, self.bucket, self.key, bytes(bad))
        return self.key

    def __exit__(self, *exc: object) -> None:
        put_object(self.s3, self.bucket, self.key, self.good)


def test_a_corrupted_backup_file_fails_the_drill_and_names_the_object(rig: Rig) -> None:
    tenant = rig.tenant(T)
    listing = rig.cli("backup", "status", T, "--json")
    label = json.loads(listing.stdout)["last_full"]["label"]
    with Corrupted(rig, _largest_object(rig, f"pgbackrest/backup/{T}/{label}/")) as key:
        code, report, _ = drill(rig)
        text = rig.cli("drill", T).stdout
    assert code == 1 and report["ok"] is False
    verify = next(c for c in report["checks"] if c["name"] == "pgbackrest verify")
    assert not verify["ok"]
    assert key in [bad["object"] for bad in verify["bad_files"]]
    assert key in text and "DRILL FAILED" in text
    assert report["scratch"]["removed"] is True
    assert not list(backup_paths(tenant).scratch_root.glob("*/scratch.json"))


def test_a_corrupted_bundle_fails_the_drill_and_names_the_object(rig: Rig) -> None:
    with Corrupted(rig, _largest_object(rig, "bundles/").replace(".json", ".bundle")) as key:
        code, report, _ = drill(rig)
    assert code == 1
    restore = next(c for c in report["checks"] if c["name"] == "restore")
    assert not restore["ok"] and key in restore["detail"]


def test_after_the_corruption_is_repaired_the_drill_passes_again(rig: Rig) -> None:
    code, report, err = drill(rig)
    assert code == 0, ([c for c in report["checks"] if not c["ok"]], err)


def test_the_drill_verifies_the_restored_audit_chain_against_the_source(rig: Rig) -> None:
    from appliance.audit.chain import AuditEvent, append_events

    with rig.connect(T) as conn, conn.transaction():
        append_events(conn, [AuditEvent("operator", "drill.test", subject=f"event:{n}") for n in range(25)])
    code, report, err = drill(rig)
    audit = next(c for c in report["checks"] if c["name"] == "audit chain")
    assert code == 0 and audit["ok"] and not audit["skipped"], (audit, err)
    assert "25 events verify" in audit["detail"]

    # An event rewritten in place (triggers off: only a superuser can) breaks the chain, and the drill says where.
    with rig.connect(T) as conn:
        conn.execute("alter table audit.events disable trigger user")
        conn.execute("update audit.events set actor = 'mallory' where seq = 5")
        conn.execute("alter table audit.events enable trigger user")
    code, report, _ = drill(rig)
    audit = next(c for c in report["checks"] if c["name"] == "audit chain")
    assert code == 1 and not audit["ok"] and "seq 5" in audit["detail"], audit
