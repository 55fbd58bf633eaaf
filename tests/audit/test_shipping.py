"""Shipping round trip against a real Postgres and a real TLS SeaweedFS with Object Lock."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json

from appliance.audit.batch import MANIFEST_METADATA_KEY, build_batch, parse_key, parse_manifest, prefix
from appliance.audit.db import fetch_range
from appliance.audit.store import list_versions
from tests.support.audit import AuditRig


def test_round_trip_ships_every_event_once_locked_with_manifest_and_checksum(rig: AuditRig) -> None:
    last = rig.append(2_500)
    assert rig.ship_all(max_events=1_000) == last
    batches = rig.assert_exactly_once()
    assert batches == 3
    s3 = rig.s3()
    keys = sorted(v.key for v in list_versions(s3, rig.bucket, prefix(rig.tenant.id)))
    today = dt.datetime.now(dt.UTC).strftime("%Y/%m/%d")
    assert keys == [f"audit/{rig.tenant.id}/{today}/000000000001-000000001000.jsonl.gz",
                    f"audit/{rig.tenant.id}/{today}/000000001001-000000002000.jsonl.gz",
                    f"audit/{rig.tenant.id}/{today}/000000002001-000000002500.jsonl.gz"]
    head = s3.head_object(Bucket=rig.bucket, Key=keys[1], ChecksumMode="ENABLED")
    body = s3.get_object(Bucket=rig.bucket, Key=keys[1])["Body"].read()
    manifest = parse_manifest(head["Metadata"][MANIFEST_METADATA_KEY])
    with rig.audit_conn() as conn:
        rows = fetch_range(conn, 1001, 2000)
    assert manifest["tenant"] == rig.tenant.id
    assert (manifest["first_seq"], manifest["last_seq"], manifest["count"]) == (1001, 2000, 1000)
    assert manifest["first_prev_hash"] == rows[0].prev_hash and manifest["last_hash"] == rows[-1].hash
    assert manifest["body_sha256"] == hashlib.sha256(body).hexdigest()
    # The checksum header the store verified on the PUT is the body's sha256.
    assert head["ChecksumSHA256"] and hashlib.sha256(body).digest().hex() == manifest["body_sha256"]
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retain = head["ObjectLockRetainUntilDate"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=23) < retain <= dt.timedelta(days=1, minutes=5)
    # Anyone can read it with gzip and json, line by line, in seq order, with both hashes.
    lines = gzip.decompress(body).decode().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1001, 2001))
    assert json.loads(lines[0])["prev_hash"] == rows[0].prev_hash
    assert rig.verify("both").ok


def test_batch_bytes_are_a_function_of_the_rows(rig: AuditRig) -> None:
    rig.append(300)
    with rig.audit_conn() as conn:
        rows = fetch_range(conn, 1, 300)
    first, again = build_batch(rig.tenant.id, rows), build_batch(rig.tenant.id, list(rows))
    assert first.body == again.body and first.key == again.key and first.manifest == again.manifest
    assert first.body[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no mtime, no name, no OS
    assert parse_key(first.key) is not None


def test_batches_close_by_size_at_once_and_by_age_when_small(rig: AuditRig) -> None:
    shipper = rig.shipper(max_events=100, max_age_s=1.0)
    try:
        rig.append(250)
        steps = [shipper.step() for _ in range(3)]
        assert [s.shipped.count if s.shipped else 0 for s in steps] == [100, 100, 0]
        assert steps[2].wait_s > 0  # 50 events, younger than a second: not yet
        import time

        time.sleep(1.1)
        result = shipper.step()
        assert result.shipped is not None and result.shipped.count == 50
        assert shipper.step().shipped is None  # nothing left
    finally:
        shipper.close()
    rig.assert_exactly_once()
