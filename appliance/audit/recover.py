"""After a restore: bring back from the store the shipped audit events the restored database lacks.

A point-in-time restore can land before the last few seconds of commits, while the shipper had already locked
some of those events in the store. Left alone, the next event would take a seq the store already holds for a
different event: the chain would fork between Postgres and S3, for good. The restore calls, after Postgres is
back and BEFORE anything writes to it (gateway, agents, the `restore` operator action itself):

    result = recover_from_store(host, tenant)     # as root, through the tenant's superuser connection
    record_operator_action(tenant, "restore", {...})

Every batch beyond the restored watermark is read (its first-written, locked version), checked as `verify`
checks it, and compared with the rows Postgres has; the missing events are inserted with their original seq,
time, content and hashes (the chain trigger accepts only exact links), the batches are recorded as shipped and
the watermark moved — all in one transaction holding the chain head. If Postgres already holds other events
under those seqs, nothing changes and RecoverError names the first seq where they differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from appliance.audit.batch import parse_key, raw_line
from appliance.audit.canonical import parse_timestamp
from appliance.audit.db import fetch_range, last_shipped_batch, watermark
from appliance.audit.store import audit_client, get_object, list_keys_after, list_versions
from appliance.audit.verify import check_batch
from appliance.config import DB_SUPERUSER, HostConfig, TenantConfig


class RecoverError(RuntimeError):
    """The store and Postgres disagree in a way a re-import cannot fix; the message names the seq."""


@dataclass(frozen=True)
class RecoverResult:
    imported_events: int
    recorded_batches: list[str]
    head_seq: int
    shipped_seq: int

    def summary(self) -> str:
        if not self.recorded_batches:
            return f"nothing to recover: the store holds nothing beyond seq {self.shipped_seq}"
        return (f"recorded {len(self.recorded_batches)} shipped batch(es) and re-imported {self.imported_events} "
                f"event(s) from the store; chain head {self.head_seq}, shipped through {self.shipped_seq}")


def recover_from_store(host: HostConfig, tenant: TenantConfig) -> RecoverResult:
    from appliance.pg import connect

    s3 = audit_client(host, tenant)
    with connect(tenant, DB_SUPERUSER) as conn, conn.transaction():
        # Holding the head for the whole transaction keeps every writer out until the chain is whole again.
        head = conn.execute("SELECT seq, hash FROM audit.lock_head()").fetchone()
        assert head is not None
        mark = watermark(conn)
        last = last_shipped_batch(conn)
        keys = []
        for key in list_keys_after(s3, tenant.audit_bucket, tenant.id, last.object_key if last else None):
            info = parse_key(key)
            if info is not None and info.tenant == tenant.id and info.last_seq > mark.shipped_seq:
                keys.append((info.first_seq, info.last_seq, key, info))
        imported, recorded = 0, []
        shipped_seq = mark.shipped_seq
        for first, last_seq, key, info in sorted(keys):
            if first != shipped_seq + 1:
                raise RecoverError(f"seq {shipped_seq + 1}: the store's next batch beyond the watermark is {key} "
                                   f"(seq {first}-{last_seq}); run `appliance audit verify {tenant.id}`")
            versions = next((v for v in list_versions(s3, tenant.audit_bucket, key) if v.key == key), None)
            original = versions.original() if versions else None
            stored = get_object(s3, tenant.audit_bucket, key, original.version_id) if original else None
            if stored is None:
                raise RecoverError(f"seq {first}: {key} cannot be read")
            check = check_batch(tenant.id, key, info, stored)
            if check.problems or check.jsonl is None:
                problem = check.problems[0].line() if check.problems else "unreadable"
                raise RecoverError(f"{key} does not verify, not importing it: {problem}")
            imported += _merge(conn, key, check.jsonl)
            # A plan the restored database kept for this very batch is completed; any other plan is a conflict.
            written = conn.execute(
                "INSERT INTO audit.batches (first_seq, last_seq, object_key, event_count, body_bytes, body_sha256, "
                "jsonl_sha256, last_hash, version_id, retain_until, shipped_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
                "ON CONFLICT (first_seq) DO UPDATE SET version_id = EXCLUDED.version_id, "
                "retain_until = EXCLUDED.retain_until, shipped_at = EXCLUDED.shipped_at "
                "WHERE audit.batches.object_key = EXCLUDED.object_key AND audit.batches.shipped_at IS NULL",
                (first, last_seq, key, last_seq - first + 1, len(stored.body), check.body_sha256,
                 check.jsonl_sha256, check.last_hash, stored.version_id, stored.retain_until),
            ).rowcount
            if written != 1:
                raise RecoverError(f"seq {first}: Postgres has another batch planned from this seq than {key}")
            conn.execute("UPDATE audit.shipped SET last_seq = %s, last_hash = %s, updated_at = now(), "
                         "error_kind = NULL, error = NULL, error_since = NULL WHERE id", (last_seq, check.last_hash))
            recorded.append(key)
            shipped_seq = last_seq
        final = watermark(conn)
    return RecoverResult(imported, recorded, final.head_seq, final.shipped_seq)


def _merge(conn: psycopg.Connection[Any], key: str, jsonl: bytes) -> int:
    """Insert the batch's events Postgres lacks; the ones it has must be the very same lines."""
    lines = [line for line in jsonl.split(b"\n") if line]
    first, last = json.loads(lines[0])["seq"], json.loads(lines[-1])["seq"]
    present = {row.seq: row for row in fetch_range(conn, first, last)}
    inserted = 0
    for line in lines:
        event = json.loads(line)
        seq = event["seq"]
        row = present.get(seq)
        if row is not None:
            if raw_line(row) != line:
                raise RecoverError(f"seq {seq}: Postgres holds another event than the store ({key}): the chain has "
                                   "forked since the restore; nothing was changed")
            continue
        conn.execute(
            "INSERT INTO audit.events (seq, ts, actor, action, house_id, subject, detail, prev_hash, hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (seq, parse_timestamp(event["ts"]), event["actor"], event["action"], event["house_id"],
             event["subject"], Jsonb(event["detail"]), event["prev_hash"], event["hash"]),
        )
        inserted += 1
    return inserted
