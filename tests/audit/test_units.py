"""Units without services: the batch format, line checks, the PUT's request, the service spec, operator events."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import uuid
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from appliance.audit.batch import (
    BatchError,
    build_batch,
    deterministic_gzip,
    gunzip,
    manifest_text,
    object_key,
    parse_key,
    parse_manifest,
)
from appliance.audit.chain import GENESIS_HASH, AuditEvent, ChainRow, build_rows
from appliance.audit.operator import operator_event
from appliance.audit.service import audit_service
from appliance.audit.shipper import same_events
from appliance.audit.store import put_batch
from appliance.audit.verify import explain_altered, parse_line
from appliance.config import host_config
from appliance.services import tenant_services


def _rows(n: int, start: int = 0, prev: str = GENESIS_HASH) -> list[ChainRow]:
    return build_rows(start, prev, [AuditEvent("alice", "x.y", uuid.UUID(int=i), f"s{i}", {"i": i, "t": "é"})
                                    for i in range(n)])


def test_key_is_deterministic_zero_padded_and_parses_back() -> None:
    moment = dt.datetime(2026, 1, 31, 23, 59, 59, tzinfo=dt.timezone(dt.timedelta(hours=-2)))  # Feb 1st in UTC
    key = object_key("acme", moment, 1, 10_000)
    assert key == "audit/acme/2026/02/01/000000000001-000000010000.jsonl.gz"
    info = parse_key(key)
    assert info is not None and (info.tenant, info.day, info.first_seq, info.last_seq) == ("acme", "2026-02-01", 1,
                                                                                           10_000)
    for bad in ("audit/acme/2026/02/01/1-2.jsonl.gz", "audit/acme/2026/02/01/000000000002-000000000001.jsonl.gz",
                "audit/acme/notes.txt", "audit/Acme/2026/02/01/000000000001-000000000002.jsonl.gz"):
        assert parse_key(bad) is None, bad


def test_gzip_is_standard_and_deterministic() -> None:
    data = b'{"a":1}\n' * 1000
    body = deterministic_gzip(data)
    assert body == deterministic_gzip(data)
    assert body[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(body) == data == gunzip(body)
    with pytest.raises(ValueError):
        gunzip(body + b"junk")
    with pytest.raises(ValueError):
        gunzip(body[:-5])
    with pytest.raises(ValueError):
        gunzip(deterministic_gzip(b"0" * 10_000), max_size=1000)


def test_batch_refuses_a_break_and_names_the_seq() -> None:
    rows = _rows(5)
    assert build_batch("acme", rows).count == 5
    altered = [*rows[:2], ChainRow(**{**rows[2].__dict__, "actor": "mallory"}), *rows[3:]]
    with pytest.raises(BatchError, match="seq 3: hash") as exc:
        build_batch("acme", altered)
    assert exc.value.kind == "hash"
    with pytest.raises(BatchError, match="seq 4 where 3"):
        build_batch("acme", rows[:2] + rows[3:])
    with pytest.raises(BatchError, match="seq 1: prev_hash"):
        build_batch("acme", rows, prev_hash="1" * 64)
    floaty = ChainRow(**{**rows[0].__dict__, "detail": {"x": 1.5}})
    with pytest.raises(BatchError, match="canonical") as exc:
        build_batch("acme", [floaty])
    assert exc.value.kind == "format"


def test_manifest_carries_the_chain_facts() -> None:
    rows = _rows(3)
    batch = build_batch("acme", rows)
    manifest = parse_manifest(manifest_text(batch.manifest))
    assert manifest == batch.manifest
    assert manifest["first_prev_hash"] == GENESIS_HASH and manifest["last_hash"] == rows[-1].hash
    assert manifest["body_sha256"] == hashlib.sha256(batch.body).hexdigest()
    assert manifest["jsonl_sha256"] == hashlib.sha256(gzip.decompress(batch.body)).hexdigest()
    for broken in (None, "", "[]", '{"format": "x"}', manifest_text({**manifest, "count": "3"}),
                   manifest_text({**manifest, "last_hash": "X" * 64})):
        with pytest.raises(ValueError):
            parse_manifest(broken)


def test_same_events_accepts_only_the_same_events() -> None:
    batch = build_batch("acme", _rows(4))
    assert same_events(batch.body, batch.manifest_header(), batch) is None
    # Another zlib could compress differently: same JSONL, other bytes, own manifest — still the same events.
    other = gzip.compress(batch.jsonl, compresslevel=1, mtime=0)
    manifest = {**batch.manifest, "body_sha256": hashlib.sha256(other).hexdigest()}
    assert same_events(other, manifest_text(manifest), batch) is None
    forged = build_batch("acme", [ChainRow(**{**r.__dict__, "actor": "m"}) for r in _rows(4)], check_hash=False)
    assert "JSONL sha256" in (same_events(forged.body, forged.manifest_header(), batch) or "")
    assert "sha256" in (same_events(batch.body + b"x", batch.manifest_header(), batch) or "")


def test_parse_line_refuses_anything_but_the_canonical_form() -> None:
    line = build_batch("acme", _rows(1)).jsonl.rstrip(b"\n")
    assert parse_line(line)["seq"] == 1
    event = json.loads(line)
    variants = {
        "spacing": json.dumps(event, sort_keys=True).encode(),
        "order": json.dumps(dict(reversed(list(event.items()))), separators=(",", ":"), ensure_ascii=False).encode(),
        "escapes": json.dumps(event, sort_keys=True, separators=(",", ":")).encode(),  # é as \\u00e9
        "float": line.replace(b'"i":0', b'"i":0.0'),
        "field": line.replace(b'"hash"', b'"hasx"'),
        "nul": line.replace(b'"s0"', b'"s\\u0000"'),
        "ts": line.replace(b'Z"', b'+00:00"'),
    }
    for name, variant in variants.items():
        assert variant != line, name
        with pytest.raises(ValueError):
            parse_line(variant)


def test_explain_altered_tells_a_renumbering_from_an_alteration() -> None:
    rows = _rows(3)
    event = json.loads(build_batch("acme", rows).jsonl.split(b"\n")[1])  # seq 2
    assert explain_altered({**event, "seq": 3}).startswith("reordered: the event now at seq 3 was written as seq 2")
    assert explain_altered({**event, "actor": "m"}).startswith("altered:")


def test_put_sends_checksums_lock_manifest_and_never_replaces() -> None:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="AKIAEXAMPLE",
                          aws_secret_access_key="secret", endpoint_url="https://127.0.0.1:1")
    batch = build_batch("acme", _rows(2))
    now = dt.datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=dt.UTC)
    with Stubber(client) as stub:
        expected: dict[str, Any] = {
            "Bucket": "acme-audit", "Key": batch.key, "Body": batch.body, "ContentType": "application/gzip",
            "ContentMD5": ANY, "ChecksumSHA256": ANY, "IfNoneMatch": "*", "ObjectLockMode": "COMPLIANCE",
            "ObjectLockRetainUntilDate": dt.datetime(2026, 1, 8, 12, 0, 1, tzinfo=dt.UTC),
            "Metadata": {"audit-manifest": batch.manifest_header()},
        }
        stub.add_response("put_object", {"VersionId": "v1"}, expected)
        outcome = put_batch(client, "acme-audit", batch, retention_days=7, now=now)
        assert outcome.created and outcome.version_id == "v1"
        stub.add_client_error("put_object", "PreconditionFailed", http_status_code=412, expected_params=expected)
        assert not put_batch(client, "acme-audit", batch, retention_days=7, now=now).created


def test_service_spec_runs_the_shipper_as_its_own_user_without_secrets() -> None:
    host = host_config("h", {"tenants": {"acme": {"slot": 0}}})
    spec = next(s for s in tenant_services(host.tenant("acme"), "d1") if s.component == "audit")
    # tenant_services adds the sources' digest, the systemd confinement (appliance.services._confined) and the
    # units it starts after (the store, its cluster and the services between).
    tenant = host.tenant("acme")
    assert spec == replace(audit_service(tenant), environment=spec.environment, writable=(tenant.root,),
                           memory_max=tenant.audit.memory_max, after=spec.after)
    assert "appliance-acme-postgres.service" in spec.after
    assert spec.name == "appliance-acme-audit" and spec.component == "audit" and spec.user == "t-acme-audit"
    assert spec.command[0].endswith("/venv/bin/appliance") and spec.port is None
    assert spec.command[1:] == ("audit", "ship", "--tenant", "acme")
    assert spec.environment == {"APPLIANCE_CONFIG_DIR": str(host.common.config_dir), "APPLIANCE_SOURCE_DIGEST": "d1"}
    assert not any("secret" in part or "password" in part for part in spec.command)


def test_operator_event_names_who_and_refuses_bad_input() -> None:
    host = host_config("h", {"tenants": {"acme": {"slot": 0}}})
    event = operator_event(host.tenant("acme"), "restore", {"backup": "20260101-000000F"})
    assert (event.actor, event.action, event.subject) == ("operator", "operator.restore", "tenant:acme")
    assert set(event.detail["operator"]) == {"host", "os_user", "sudo_user"}
    for action in ("Deploy", "deploy now", "", "operator;drop"):
        with pytest.raises(ValueError):
            operator_event(host.tenant("acme"), action)
    with pytest.raises(ValueError):
        operator_event(host.tenant("acme"), "deploy", {"ratio": 0.5})
    with pytest.raises(ValueError):
        operator_event(host.tenant("acme"), "deploy", {"operator": "me"})


def test_split_body_is_the_canonical_body_around_seq_and_time() -> None:
    from appliance.audit.canonical import canonical_json, format_timestamp
    from appliance.audit.chain import event_body, split_body

    moment = dt.datetime(2026, 3, 1, 0, 0, 0, 7, tzinfo=dt.UTC)
    for event in (AuditEvent("alice", "x.y", uuid.UUID(int=5), "s", {"seq": 1, "ts": "x", "é": ["\n"]}),
                  AuditEvent("operator", "operator.deploy", None, None, {})):
        before, middle, _, _ = split_body(event)
        for seq in (1, 42, 9_007_199_254_740_991):
            body = event_body(seq, moment, event.actor, event.action, event.house_id, event.subject, event.detail)
            assert (before + str(seq) + middle + format_timestamp(moment) + '"}').encode() == canonical_json(body)
