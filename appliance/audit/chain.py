"""The audit hash chain: appending events without forking it, and verifying rows against it.

Every event is a row of `audit.events` (schema in appliance/tenantdb/migrations/0002_audit.sql):
`seq, ts, actor, action, house_id, subject, detail, prev_hash, hash`, with
`hash = sha256(canonical_json(event) || prev_hash)` as specified in appliance/audit/canonical.py.

Writers never fork the chain: `append_event` locks the single row of `audit.chain_head` (FOR UPDATE, through
`audit.lock_head()`) inside the caller's transaction, takes seq + 1 and the head's hash as prev_hash, and
inserts the event; the insert trigger refuses an event that does not follow the head and moves the head.
A second writer blocks on that row lock until the first commits (or rolls back, in which case its event never
existed and the head is unchanged), so seqs stay contiguous and every prev_hash is the hash of seq - 1.
Call it last in a transaction, just before commit, to hold the lock as briefly as possible.

A single event goes in one statement where the database has `audit.append_event` (migration 0006): the writer
sends the event's canonical JSON around its seq and time (`split_body`), and the database locks the head,
stamps the time (clock_timestamp(), under the lock, so times follow seqs), hashes and inserts. Inside the
caller's transaction no savepoint is taken. Together that is one round trip under the head lock instead of four.

Two drivers: the synchronous functions take psycopg connections (the CLI, operator actions, the shipper, tests),
where libpq's conveniences matter more than CPU per statement; `append_events_async` takes the gateway's
asyncpg connections (appliance/gateway/core/db.py), on the request path, where statements prepared once per
connection and parameters encoded in C are what an audited request costs.
"""

from __future__ import annotations

import hashlib
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import psycopg
from psycopg.types.json import Jsonb

from appliance.audit.canonical import CanonicalError, canonical_json, format_timestamp

GENESIS_HASH: Final = "0" * 64

# audit.lock_head() locks the head row FOR UPDATE until commit; the insert trigger checks the links and moves
# the head (see 0002_audit.sql), so writers need neither UPDATE on the head nor a second statement.
_LOCK_HEAD: Final = "SELECT seq, hash FROM audit.lock_head()"
_INSERT_EVENT: Final = (
    "INSERT INTO audit.events (seq, ts, actor, action, house_id, subject, detail, prev_hash, hash) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


@dataclass(frozen=True)
class AuditEvent:
    """What happened: who (`actor`: a principal id, "operator", "anonymous", "system"), what (`action`, dotted,
    e.g. "thread.create", "auth.refused"), in which house, to what (`subject`, e.g. "thread:<id>"), and details
    (JSON: strings, integers, booleans, null, lists, objects; never secret values)."""

    actor: str
    action: str
    house_id: uuid.UUID | str | None = None
    subject: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainRow:
    seq: int
    ts: datetime
    actor: str
    action: str
    house_id: str | None
    subject: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def hashed_body(self) -> dict[str, Any]:
        return event_body(self.seq, self.ts, self.actor, self.action, self.house_id, self.subject, self.detail)


def event_body(seq: int, ts: datetime, actor: str, action: str, house_id: uuid.UUID | str | None,
               subject: str | None, detail: Mapping[str, Any]) -> dict[str, Any]:
    """The object whose canonical JSON is hashed (every field but the two hashes)."""
    return {
        "seq": seq,
        "ts": format_timestamp(ts),
        "actor": actor,
        "action": action,
        "house_id": None if house_id is None else str(uuid.UUID(str(house_id))),
        "subject": subject,
        "detail": dict(detail),
    }


def event_hash(body: Mapping[str, Any], prev_hash: str) -> str:
    if len(prev_hash) != 64:
        raise CanonicalError("prev_hash must be 64 hex digits")
    return hashlib.sha256(canonical_json(body) + bytes.fromhex(prev_hash)).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def build_rows(head_seq: int, head_hash: str, events: Sequence[AuditEvent]) -> list[ChainRow]:
    """The rows that follow the head (seq, hash) for `events`, in order; pure, so it is tested alone."""
    rows: list[ChainRow] = []
    seq, prev = head_seq, head_hash
    for event in events:
        seq += 1
        ts = _now()
        body = event_body(seq, ts, event.actor, event.action, event.house_id, event.subject, event.detail)
        digest = event_hash(body, prev)
        rows.append(ChainRow(seq, ts, event.actor, event.action, body["house_id"], event.subject,
                             body["detail"], prev, digest))
        prev = digest
    return rows


def _params(row: ChainRow) -> tuple[Any, ...]:
    return (row.seq, row.ts, row.actor, row.action, row.house_id, row.subject, Jsonb(row.detail),
            row.prev_hash, row.hash)


# One event in one statement (migration 0006): the database locks the head, stamps the time and hashes the
# canonical text the writer sends around the seq and the time (see `split_body`).
_APPEND_ONE: Final = "SELECT seq, hash FROM audit.append_event(%s, %s, %s, %s, %s, %s, %s)"
_APPEND_ONE_SIGNATURE: Final = "audit.append_event(text,text,uuid,text,jsonb,text,text)"


def split_body(event: AuditEvent) -> tuple[str, str, str | None, dict[str, Any]]:
    """The canonical JSON of the event's hashed body around its seq and time: (before, middle, house_id, detail).

    before + str(seq) + middle + format_timestamp(ts) + '"}' == canonical_json(event_body(seq, ts, ...)),
    because the body's keys sort as action, actor, detail, house_id, seq, subject, ts."""
    house_id = None if event.house_id is None else str(uuid.UUID(str(event.house_id)))
    detail = dict(event.detail)
    head = canonical_json({"action": event.action, "actor": event.actor, "detail": detail, "house_id": house_id})
    tail = canonical_json({"subject": event.subject})
    return head[:-1].decode() + ',"seq":', "," + tail[1:-1].decode() + ',"ts":"', house_id, detail


def _append_one_params(event: AuditEvent) -> tuple[Any, ...]:
    before, middle, house_id, detail = split_body(event)
    return (event.actor, event.action, house_id, event.subject, Jsonb(detail), before, middle)


# Whether the connection's database has audit.append_event (migration 0006), asked once per connection: one
# opened before a deploy migrated its database keeps appending the older way, which the schema still accepts.
_HAS_APPEND_ONE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_HAS_APPEND_ONE_SQL: Final = "SELECT to_regprocedure(%s) IS NOT NULL"


def _in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    # Inside the caller's transaction the events simply join it: `conn.transaction()` there would add a
    # savepoint (two more round trips) for nothing, as a failed append fails the caller's transaction anyway.
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def append_events(conn: psycopg.Connection[Any], events: Sequence[AuditEvent]) -> list[tuple[int, str]]:
    """Append `events` to the chain in the caller's transaction (one is opened if none is); [(seq, hash)]."""
    if not events:
        return []
    if _in_transaction(conn):
        return _append(conn, events)
    with conn.transaction():
        return _append(conn, events)


def _append(conn: psycopg.Connection[Any], events: Sequence[AuditEvent]) -> list[tuple[int, str]]:
    if len(events) == 1:
        if conn not in _HAS_APPEND_ONE:
            found = conn.execute(_HAS_APPEND_ONE_SQL, (_APPEND_ONE_SIGNATURE,)).fetchone()
            _HAS_APPEND_ONE[conn] = bool(found and found[0])
        if _HAS_APPEND_ONE[conn]:
            row = conn.execute(_APPEND_ONE, _append_one_params(events[0])).fetchone()
            assert row is not None
            return [(int(row[0]), str(row[1]))]
    with conn.cursor() as cur:
        head = cur.execute(_LOCK_HEAD).fetchone()
        if head is None:
            raise RuntimeError("audit.chain_head has no row: the audit migration has not run")
        rows = build_rows(int(head[0]), str(head[1]), events)
        if len(rows) == 1:
            # executemany pipelines even a single row (an extra sync with the server): one event, one statement.
            cur.execute(_INSERT_EVENT, _params(rows[0]))
        else:
            cur.executemany(_INSERT_EVENT, [_params(row) for row in rows])
    return [(row.seq, row.hash) for row in rows]


def append_event(conn: psycopg.Connection[Any], event: AuditEvent) -> tuple[int, str]:
    """Append one event in the caller's transaction; returns its (seq, hash)."""
    return append_events(conn, [event])[0]


# The asyncio side (the gateway) runs on asyncpg: `$n` placeholders, jsonb as Python values (the gateway's
# connections carry a jsonb codec, appliance/gateway/core/db.py), the statements prepared once per connection.
_LOCK_HEAD_ASYNC: Final = _LOCK_HEAD
_INSERT_EVENT_ASYNC: Final = (
    "INSERT INTO audit.events (seq, ts, actor, action, house_id, subject, detail, prev_hash, hash) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_APPEND_ONE_ASYNC: Final = "SELECT seq, hash FROM audit.append_event($1, $2, $3, $4, $5, $6, $7)"
_HAS_APPEND_ONE_ASYNC: Final = "SELECT to_regprocedure($1) IS NOT NULL"


async def append_events_async(conn: asyncpg.Connection, events: Sequence[AuditEvent]) -> list[tuple[int, str]]:
    """`append_events` for asyncio callers (the gateway, on asyncpg)."""
    if not events:
        return []
    if conn.is_in_transaction():
        return await _append_async(conn, events)
    async with conn.transaction():
        return await _append_async(conn, events)


async def _append_async(conn: asyncpg.Connection, events: Sequence[AuditEvent]) -> list[tuple[int, str]]:
    if len(events) == 1:
        # The gateway's connections learn this once when they are made; others ask each time.
        append_one = getattr(conn, "audit_append_one", None)
        if append_one is None:
            append_one = bool(await conn.fetchval(_HAS_APPEND_ONE_ASYNC, _APPEND_ONE_SIGNATURE))
        if append_one:
            actor, action, house_id, subject, detail, before, middle = _append_one_values(events[0])
            appended = await conn.fetchrow(_APPEND_ONE_ASYNC, actor, action, house_id, subject, detail, before,
                                           middle)
            assert appended is not None
            return [(int(appended[0]), str(appended[1]))]
    head = await conn.fetchrow(_LOCK_HEAD_ASYNC)
    if head is None:
        raise RuntimeError("audit.chain_head has no row: the audit migration has not run")
    rows = build_rows(int(head[0]), str(head[1]), events)
    values = [(row.seq, row.ts, row.actor, row.action, row.house_id, row.subject, row.detail,
               row.prev_hash, row.hash) for row in rows]
    if len(values) == 1:
        await conn.execute(_INSERT_EVENT_ASYNC, *values[0])
    else:
        await conn.executemany(_INSERT_EVENT_ASYNC, values)
    return [(row.seq, row.hash) for row in rows]


def _append_one_values(event: AuditEvent) -> tuple[Any, ...]:
    before, middle, house_id, detail = split_body(event)
    return (event.actor, event.action, house_id, event.subject, detail, before, middle)


async def append_event_async(conn: asyncpg.Connection, event: AuditEvent) -> tuple[int, str]:
    return (await append_events_async(conn, [event]))[0]


# -- verification --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


@dataclass(frozen=True)
class Verification:
    ok: bool
    count: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    first_break: ChainBreak | None = None


def _as_row(raw: ChainRow | Mapping[str, Any]) -> ChainRow:
    if isinstance(raw, ChainRow):
        return raw
    ts = raw["ts"]
    if isinstance(ts, str):
        from appliance.audit.canonical import parse_timestamp

        ts = parse_timestamp(ts)
    house = raw.get("house_id")
    return ChainRow(
        seq=int(raw["seq"]), ts=ts, actor=str(raw["actor"]), action=str(raw["action"]),
        house_id=None if house is None else str(house), subject=raw.get("subject"),
        detail=dict(raw.get("detail") or {}), prev_hash=str(raw["prev_hash"]), hash=str(raw["hash"]),
    )


def verify_rows(rows: Iterable[ChainRow | Mapping[str, Any]], *, prev_hash: str | None = None,
                first_seq: int | None = None) -> Verification:
    """Check that `rows` (ascending seq) form an unbroken chain: contiguous seqs, each prev_hash the previous
    row's hash, each hash recomputed from the row. `prev_hash`/`first_seq` pin where the range must start
    (the genesis hash and seq 1 for a whole chain; a shipped batch's manifest for a range); without them the
    first row's own prev_hash is taken as given. Stops at the first break and names it."""
    count = 0
    expected_seq = first_seq
    expected_prev = prev_hash
    start: int | None = None
    last: ChainRow | None = None
    for raw in rows:
        try:
            row = _as_row(raw)
        except (KeyError, TypeError, ValueError) as exc:
            seq = raw.get("seq", -1) if isinstance(raw, Mapping) else -1
            return Verification(False, count, start, last.seq if last else None, last.hash if last else None,
                                ChainBreak(int(seq), f"unreadable row: {exc}"))
        if start is None:
            start = row.seq
            if expected_prev is None and row.seq == 1:
                expected_prev = GENESIS_HASH  # the first event of a chain always follows the genesis hash
        broken: str | None = None
        if expected_seq is not None and row.seq != expected_seq:
            broken = f"seq {row.seq} where {expected_seq} was expected (missing or reordered events)"
        elif expected_prev is not None and row.prev_hash != expected_prev:
            broken = f"prev_hash {row.prev_hash} differs from the previous event's hash {expected_prev}"
        else:
            try:
                recomputed = event_hash(row.hashed_body(), row.prev_hash)
            except (CanonicalError, ValueError) as exc:
                broken = f"cannot be hashed: {exc}"
            else:
                if recomputed != row.hash:
                    broken = f"hash {row.hash} differs from the recomputed {recomputed} (the row was altered)"
        if broken:
            return Verification(False, count, start, last.seq if last else None, last.hash if last else None,
                                ChainBreak(row.seq, broken))
        count += 1
        last = row
        expected_seq = row.seq + 1
        expected_prev = row.hash
    return Verification(True, count, start, last.seq if last else None, last.hash if last else None)


def fetch_rows(conn: psycopg.Connection[Any], after_seq: int = 0, limit: int = 10_000) -> list[ChainRow]:
    """Rows after `after_seq` in seq order (for `verify_rows`); needs SELECT on audit.events."""
    cur = conn.execute(
        "SELECT seq, ts, actor, action, house_id, subject, detail, prev_hash, hash FROM audit.events "
        "WHERE seq > %s ORDER BY seq LIMIT %s",
        (after_seq, limit),
    )
    return [
        ChainRow(int(r[0]), r[1], r[2], r[3], None if r[4] is None else str(r[4]), r[5], r[6] or {}, r[7], r[8])
        for r in cur.fetchall()
    ]
