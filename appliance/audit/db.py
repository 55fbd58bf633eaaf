"""What the audit code reads and writes in the tenant's database (schema: tenantdb migrations 0002 and 0004).

The shipper, `verify` and `status` connect as the `audit` role: it reads events and the chain head, plans and
records batches, and moves the watermark — it cannot insert, change or delete an event. Operator actions are
appended as the tenant's superuser (appliance/audit/operator.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from appliance.audit.chain import ChainRow
from appliance.config import TenantConfig
from appliance.pg import connect

AUDIT_ROLE: Final = "audit"
# One shipper per tenant database: a second one (a deploy overlapping a restart, an operator's manual run)
# waits for this session lock instead of racing the first for the same batch.
SHIPPER_LOCK_NAME: Final = "appliance.audit.shipper"
_ROW_COLUMNS: Final = "seq, ts, actor, action, house_id, subject, detail, prev_hash, hash"


def connect_audit(tenant: TenantConfig, timeout: float = 5) -> psycopg.Connection[Any]:
    """An autocommit connection as the `audit` role (password read from the tenant's secret file)."""
    return connect(tenant, AUDIT_ROLE, timeout=timeout)


def to_row(raw: tuple[Any, ...]) -> ChainRow:
    return ChainRow(int(raw[0]), raw[1], raw[2], raw[3], None if raw[4] is None else str(raw[4]), raw[5],
                    raw[6] if raw[6] is not None else {}, raw[7], raw[8])


def fetch_range(conn: psycopg.Connection[Any], first_seq: int, last_seq: int) -> list[ChainRow]:
    cur = conn.execute(f"SELECT {_ROW_COLUMNS} FROM audit.events WHERE seq BETWEEN %s AND %s ORDER BY seq",
                       (first_seq, last_seq))
    return [to_row(r) for r in cur.fetchall()]


# An event as its JSONL line spells it (appliance/audit/batch.py), formatted by Postgres: the time in the
# canonical form (what canonical.format_timestamp gives) and the UUID as text, so that verifying a million rows
# costs no datetime or UUID objects in Python.
_EVENT_COLUMNS: Final = ("seq, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor, "
                         "action, house_id::text, subject, detail, prev_hash, hash")
_EVENT_KEYS: Final = ("seq", "ts", "actor", "action", "house_id", "subject", "detail", "prev_hash", "hash")


def stream_events(conn: psycopg.Connection[Any], after_seq: int = 0, chunk: int = 20_000,
                  ) -> Iterator[dict[str, Any]]:
    """Every event after `after_seq` in seq order as a dict with the JSONL line's fields (for verify/export)."""
    last = after_seq
    query = f"SELECT {_EVENT_COLUMNS} FROM audit.events WHERE seq > %s ORDER BY seq LIMIT %s"
    while True:
        rows = conn.execute(query, (last, chunk)).fetchall()  # type: ignore[arg-type]
        if not rows:
            return
        for raw in rows:
            event = dict(zip(_EVENT_KEYS, raw, strict=True))
            if event["detail"] is None:
                event["detail"] = {}
            yield event
        last = int(rows[-1][0])


@dataclass(frozen=True)
class Watermark:
    shipped_seq: int
    shipped_hash: str
    head_seq: int
    head_hash: str
    updated_at: dt.datetime
    error_kind: str | None
    error: str | None
    error_since: dt.datetime | None


def watermark(conn: psycopg.Connection[Any]) -> Watermark:
    row = conn.execute(
        "SELECT s.last_seq, s.last_hash, h.seq, h.hash, s.updated_at, s.error_kind, s.error, s.error_since "
        "FROM audit.shipped s, audit.chain_head h"
    ).fetchone()
    if row is None:
        raise RuntimeError("audit.shipped or audit.chain_head has no row: the audit migrations have not run")
    return Watermark(int(row[0]), row[1], int(row[2]), row[3], row[4], row[5], row[6], row[7])


def event_ts(conn: psycopg.Connection[Any], seq: int) -> dt.datetime | None:
    row = conn.execute("SELECT ts FROM audit.events WHERE seq = %s", (seq,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class BatchRecord:
    first_seq: int
    last_seq: int
    object_key: str
    body_bytes: int
    body_sha256: str
    jsonl_sha256: str
    last_hash: str
    planned_at: dt.datetime
    version_id: str | None
    retain_until: dt.datetime | None
    shipped_at: dt.datetime | None


_BATCH_COLUMNS: Final = ("first_seq, last_seq, object_key, body_bytes, body_sha256, jsonl_sha256, last_hash, "
                         "planned_at, version_id, retain_until, shipped_at")


def _batch(raw: tuple[Any, ...]) -> BatchRecord:
    return BatchRecord(int(raw[0]), int(raw[1]), raw[2], int(raw[3]), raw[4], raw[5], raw[6], raw[7], raw[8],
                       raw[9], raw[10])


def pending_batch(conn: psycopg.Connection[Any]) -> BatchRecord | None:
    row = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM audit.batches WHERE shipped_at IS NULL").fetchone()
    return None if row is None else _batch(row)


def last_shipped_batch(conn: psycopg.Connection[Any]) -> BatchRecord | None:
    row = conn.execute(f"SELECT {_BATCH_COLUMNS} FROM audit.batches WHERE shipped_at IS NOT NULL "
                       "ORDER BY first_seq DESC LIMIT 1").fetchone()
    return None if row is None else _batch(row)


def all_batches(conn: psycopg.Connection[Any]) -> list[BatchRecord]:
    return [_batch(r) for r in conn.execute(f"SELECT {_BATCH_COLUMNS} FROM audit.batches ORDER BY first_seq")]
