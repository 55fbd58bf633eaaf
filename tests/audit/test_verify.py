"""verify catches what an attacker can do, and names it: the seq, the kind, what differs.

What the attacker can do is bounded by the store: with the tenant's keys a shipped version can be neither
deleted nor changed nor have its retention shortened (test_store_refusals.py), but a delete marker can hide it
and a PUT can stack a different version on top of it. In Postgres a superuser can disable the trigger and
change, renumber or rewrite rows. verify reads every version, so each of these shows."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.audit.batch import (
    MANIFEST_METADATA_KEY,
    build_batch,
    deterministic_gzip,
    gunzip,
    manifest_text,
    object_key,
    prefix,
)
from appliance.audit.chain import GENESIS_HASH, ChainRow, build_rows
from appliance.audit.db import fetch_range
from appliance.audit.status import audit_status
from appliance.audit.store import list_versions
from appliance.objectstore.client import put_object
from tests.support.audit import AuditRig, audit_rig, stop, wait_for
from tests.support.objectstore import ObjectStore


@pytest.fixture
def shipped(store: ObjectStore) -> Iterator[AuditRig]:
    """A tenant with 300 events shipped in three batches of 100."""
    with audit_rig(store, audit={"batch_max_events": 100}) as rig:
        rig.append(300)
        assert rig.ship_all() == 300
        report = rig.verify("both")
        assert report.ok, report.summary()
        yield rig


def _tamper(rig: AuditRig, *statements: str) -> None:
    """As the tenant's superuser, with the insert-only trigger switched off for the moment."""
    with rig.superuser() as conn, conn.transaction():
        conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_insert_only")
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]
        conn.execute("ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_insert_only")


def _keys(rig: AuditRig) -> list[str]:
    return sorted(v.key for v in list_versions(rig.s3(), rig.bucket, prefix(rig.tenant.id)))


def test_row_tampered_in_postgres_after_shipping(shipped: AuditRig) -> None:
    rig = shipped
    _tamper(rig, """UPDATE audit.events SET detail = '{"n": 999, "name": "forged"}' WHERE seq = 137""")
    report = rig.verify("db")
    assert not report.ok
    first = report.first_break
    assert first is not None and (first.seq, first.where, first.kind) == (137, "db", "altered"), report.summary()
    both = rig.verify("both")
    problems = {(p.seq, p.where, p.kind) for p in both.problems}
    assert problems == {(137, "db", "altered"), (137, "s3/db", "mismatch")}, both.summary()
    mismatch = next(p for p in both.problems if p.where == "s3/db")
    assert "differ in detail" in mismatch.message and '"forged"' in mismatch.message
    assert "altered after it was shipped" in mismatch.message
    assert rig.verify("s3").ok  # the shipped copy is the original
    cli = rig.cli("audit", "verify", rig.tenant.id)
    assert cli.returncode == 1
    assert "first break: seq 137 [db: altered]" in cli.stdout, cli.stdout


def test_chain_rewritten_consistently_in_postgres_is_caught_only_against_s3(shipped: AuditRig) -> None:
    """A superuser who recomputes every hash from seq 150 on makes Postgres self-consistent: only the shipped
    copy can tell, and verify --from both names the first rewritten seq."""
    rig = shipped
    with rig.audit_conn() as conn:
        rows = fetch_range(conn, 149, 300)
    forged = [ChainRow(**{**r.__dict__, "detail": {**r.detail, "n": -1}}) if r.seq == 150 else r for r in rows]
    prev = rows[0].hash
    statements = []
    from appliance.audit.chain import event_hash

    for row in forged[1:]:
        digest = event_hash(row.hashed_body(), prev)
        statements.append(f"UPDATE audit.events SET detail = '{json.dumps(row.detail)}'::jsonb, prev_hash = "
                          f"'{prev}', hash = '{digest}' WHERE seq = {row.seq}")
        prev = digest
    statements.append(f"UPDATE audit.chain_head SET hash = '{prev}'")
    _tamper(rig, "ALTER TABLE audit.events DROP CONSTRAINT events_hash_key", *statements)
    assert rig.verify("db").ok
    report = rig.verify("both")
    first = report.first_break
    assert first is not None and (first.seq, first.where, first.kind) == (150, "s3/db", "mismatch")
    assert "rewritten" in first.message and "detail" in first.message


def test_events_reordered_in_postgres_are_named(shipped: AuditRig) -> None:
    rig = shipped
    _tamper(rig, "UPDATE audit.events SET seq = 1000000 WHERE seq = 241",
            "UPDATE audit.events SET seq = 241 WHERE seq = 242",
            "UPDATE audit.events SET seq = 242 WHERE seq = 1000000")
    report = rig.verify("db")
    first = report.first_break
    assert first is not None and (first.seq, first.kind) == (241, "reordered"), report.summary()
    assert "written as seq 242" in first.message


def test_a_batch_hidden_by_a_delete_marker_is_named(shipped: AuditRig) -> None:
    rig = shipped
    key = _keys(rig)[1]  # seq 101-200
    s3 = rig.s3()
    s3.delete_object(Bucket=rig.bucket, Key=key)  # allowed: it only adds a delete marker
    report = rig.verify("s3")
    first = report.first_break
    assert first is not None and (first.seq, first.kind) == (101, "hidden"), report.summary()
    assert key in first.message and "delete marker" in first.message and "101-200" in first.message
    assert not rig.verify("both").ok


def test_a_different_version_stacked_on_a_batch_is_named(shipped: AuditRig) -> None:
    """With the tenant's keys an attacker PUTs a forged batch (two events swapped, a manifest to match) over
    the shipped key; a plain GET now returns it. verify checks the shipped version and names the other."""
    rig = shipped
    key = _keys(rig)[2]  # seq 201-300
    s3 = rig.s3()
    original = s3.get_object(Bucket=rig.bucket, Key=key)
    lines = gunzip(original["Body"].read()).split(b"\n")
    lines[4], lines[5] = lines[5], lines[4]  # seq 205 and 206 change places
    jsonl = b"\n".join(lines)
    body = deterministic_gzip(jsonl)
    manifest = json.loads(original["Metadata"][MANIFEST_METADATA_KEY])
    manifest.update(body_sha256=hashlib.sha256(body).hexdigest(), jsonl_sha256=hashlib.sha256(jsonl).hexdigest())
    put_object(s3, rig.bucket, key, body, Metadata={MANIFEST_METADATA_KEY: manifest_text(manifest)})
    report = rig.verify("s3")
    first = report.first_break
    assert first is not None and (first.seq, first.kind) == (201, "overwritten"), report.summary()
    assert key in first.message and "line 5 differs" in first.message
    assert "seq 206 stands where seq 205 belongs" in first.message
    assert len(report.problems) == 1  # the shipped version itself checks out
    assert rig.verify("both").first_break == first


def test_reordered_lines_in_a_batch_are_named() -> None:
    from appliance.audit.batch import parse_key
    from appliance.audit.store import StoredObject
    from appliance.audit.verify import check_batch

    rows = build_rows(0, GENESIS_HASH, [_event(i) for i in range(10)])
    batch = build_batch("acme", rows)
    lines = batch.jsonl.split(b"\n")
    lines[3], lines[4] = lines[4], lines[3]
    jsonl = b"\n".join(lines)
    body = deterministic_gzip(jsonl)
    manifest = {**batch.manifest, "body_sha256": hashlib.sha256(body).hexdigest(),
                "jsonl_sha256": hashlib.sha256(jsonl).hexdigest()}
    obj = StoredObject(batch.key, "v1", body, {MANIFEST_METADATA_KEY: manifest_text(manifest)}, "COMPLIANCE",
                       dt.datetime.now(dt.UTC), None)
    info = parse_key(batch.key)
    assert info is not None
    problems = check_batch("acme", batch.key, info, obj).problems
    assert problems and (problems[0].seq, problems[0].kind) == (4, "reordered")
    assert "seq 5 stands where seq 4 belongs (line 4); seq 4 is on line 5" in problems[0].message


def _event(i: int) -> Any:
    from appliance.audit.chain import AuditEvent

    return AuditEvent("alice", "x.y", None, f"s{i}", {"i": i})


def test_a_forged_batch_ahead_of_the_shipper_halts_it_and_verify_names_it(store: ObjectStore) -> None:
    """Someone with the tenant's keys writes the key the next batch will have. The shipper must neither add a
    second version nor skip those seqs: it halts, status says why, and verify names the forged object."""
    with audit_rig(store, audit={"batch_max_events": 50, "batch_max_age_s": 0.2}) as rig:
        rig.append(50)
        assert rig.ship_all() == 50
        rig.append(50)
        with rig.audit_conn() as conn:
            rows = fetch_range(conn, 51, 100)
        genuine = build_batch(rig.tenant.id, rows)
        forged_rows = [ChainRow(**{**r.__dict__, "actor": "mallory"}) for r in rows]
        forged = build_batch(rig.tenant.id, forged_rows, check_hash=False)
        assert forged.key == genuine.key == object_key(rig.tenant.id, rows[0].ts, 51, 100)
        put_object(rig.s3(), rig.bucket, forged.key, forged.body,
                   Metadata={MANIFEST_METADATA_KEY: forged.manifest_header()})
        process = rig.start_shipper(log_name="forged.log")
        try:
            wait_for(lambda: audit_status(rig.tenant)["error_kind"] == "conflict", 60, "the shipper to halt")
        finally:
            stop(process)
        status = audit_status(rig.tenant)
        assert not status["healthy"] and "HALTED" in status["detail"] and forged.key in status["detail"]
        assert rig.shipped() == 50
        versions = list(list_versions(rig.s3(), rig.bucket, forged.key))
        assert len(versions[0].versions) == 1  # the shipper added nothing
        report = rig.verify("both")
        first = report.first_break
        assert first is not None and first.seq == 51, report.summary()
        assert {(p.seq, p.kind) for p in report.problems} >= {(51, "altered"), (51, "mismatch")}


def test_a_row_tampered_before_shipping_halts_the_shipper(store: ObjectStore) -> None:
    with audit_rig(store, audit={"batch_max_events": 50, "batch_max_age_s": 0.2}) as rig:
        rig.append(50)
        rig.ship_all()
        rig.append(50)
        _tamper(rig, "UPDATE audit.events SET actor = 'nobody' WHERE seq = 77")
        process = rig.start_shipper(log_name="tampered.log")
        try:
            wait_for(lambda: audit_status(rig.tenant)["error_kind"] == "chain", 60, "the shipper to halt")
        finally:
            stop(process)
        status = audit_status(rig.tenant)
        assert not status["healthy"] and "seq 77" in status["detail"], status
        assert rig.shipped() == 50
        [only] = _keys(rig)  # the batch before the tampered event, and nothing after it
        assert "000000000001-000000000050" in only
