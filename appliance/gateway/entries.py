"""Thread entries: appended to the thread's stream exactly once per entry id, with their mentions dispatched
through the outbox (migrations/0003_entries_outbox.sql).

The protocol, and why it never stores an entry twice nor loses one:

1. Take a session advisory lock on the entry id (held until step 4; released by Postgres if the gateway dies).
2. In one transaction: check the thread and the caller's membership, record the entry as `pending` with the
   exact message, a `floor_offset` (the highest offset recorded for the thread so far, at or before wherever
   this entry will land), one outbox row per mention (`held`), and the audit event. Commit (synchronously: from
   here on the entry is never lost).
3. Append the message to the stream.
4. Mark the entry `appended` with the returned offset and release its outbox rows (`ready`); wake the
   dispatcher. This commit may be asynchronous: if it is lost, step 5 redoes it.
5. Whoever later finds the entry `pending` (the client retrying with the same id, or the recovery sweep after
   a crash) takes the same lock - so the first attempt is finished or dead - and reads the stream after
   `floor_offset`: if a message with the entry's id is there it only records that, else it appends.

So appends of one entry are serialised by the lock, and every append but the first is preceded by a look at
the stream. The stream's own idempotent-producer state is not relied on (it can be lost in a crash, see
specs/durable-streams.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from appliance.audit.canonical import format_timestamp
from appliance.audit.chain import AuditEvent, build_rows, insert_rows_async
from appliance.gateway.access import Principal, Refused, fetch_one
from appliance.gateway.auditlog import AuditLog
from appliance.gateway.core.db import Database
from appliance.gateway.core.errors import ApiError
from appliance.gateway.models import EntryCreate
from appliance.gateway.schema import ROLE_RANK
from appliance.gateway.streams import StreamError, StreamMissing, StreamsClient

log = logging.getLogger("appliance.gateway")

# `@name` where name is an agent name (see AgentName); not inside a word or an e-mail address.
MENTION = re.compile(r"(?<![A-Za-z0-9_.@-])@([A-Za-z0-9][A-Za-z0-9_-]{0,62})")
MAX_MENTIONS = 20

# Step 2's main statement (after the entry lock): the thread, the caller's membership of its house, whether
# the entry id is already recorded; the entry recorded if the caller may post it (the author's kind taken from
# the membership); and the chain head locked for the audit event. One row whenever the head exists; the
# access columns are NULL when there is no such live thread.
_RECORD = (
    "WITH access AS ("
    " SELECT t.house_id, m.role, m.principal_kind, e.thread_id AS existing_thread, e.request_hash AS existing_hash"
    " FROM public.threads t"
    " JOIN public.houses h ON h.id = t.house_id AND h.deleted_at IS NULL"
    " LEFT JOIN public.members m ON m.house_id = t.house_id AND m.principal_id = %(author)s"
    "  AND m.deleted_at IS NULL"
    " LEFT JOIN appliance.thread_entries e ON e.id = %(id)s"
    " WHERE t.id = %(thread)s AND t.deleted_at IS NULL), "
    "inserted AS ("
    " INSERT INTO appliance.thread_entries (id, thread_id, house_id, author_id, message, request_hash, state,"
    "  floor_offset)"
    " SELECT %(id)s, %(thread)s, a.house_id, %(author)s,"
    "  jsonb_set(%(message)s, '{author,kind}', to_jsonb(a.principal_kind)), %(hash)s, 'pending', coalesce(("
    "   SELECT f.next_offset FROM appliance.thread_entries f WHERE f.thread_id = %(thread)s"
    "   AND f.state = 'appended' ORDER BY f.next_offset COLLATE \"C\" DESC LIMIT 1), '-1')"
    " FROM access a WHERE a.role IS NOT NULL AND a.existing_thread IS NULL"
    " ON CONFLICT (id) DO NOTHING RETURNING message), "
    "head AS (SELECT seq, hash FROM audit.lock_head()) "
    "SELECT a.house_id, a.role, a.existing_thread, a.existing_hash, (SELECT message FROM inserted), h.seq, h.hash "
    "FROM head h LEFT JOIN access a ON true"
)

# Step 4 as one statement. Losing its commit in a Postgres crash is harmless (the entry is found pending and
# completed from the stream), so it does not wait for the WAL flush (set_config(..., true): this transaction
# only). Returns how many activations it released.
_MARK_APPENDED = (
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting), "
    "entry AS (UPDATE appliance.thread_entries SET state = 'appended', next_offset = %(offset)s, "
    " appended_at = now() WHERE id = %(id)s AND state = 'pending' RETURNING id), "
    "released AS (UPDATE appliance.outbox SET state = 'ready', next_attempt_at = now() "
    " WHERE entry_id = %(id)s AND state = 'held' RETURNING id) "
    "SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM entry), (SELECT setting FROM relaxed)"
)


def mentions_in(text: str) -> list[str]:
    """Agent names mentioned in `text`, first occurrence order, case-insensitively distinct, at most 20."""
    seen: dict[str, str] = {}
    for match in MENTION.finditer(text):
        name = match.group(1)
        seen.setdefault(name.lower(), name)
        if len(seen) >= MAX_MENTIONS:
            break
    return list(seen.values())


def lock_key(entry_id: uuid.UUID) -> int:
    """The advisory lock of an entry (a collision only serialises two unrelated entries)."""
    return int.from_bytes(entry_id.bytes[:8], "big", signed=True)


def request_hash(entry: EntryCreate) -> str:
    # Not the audit's canonical form: entry data may hold floats, which are fine for telling requests apart.
    text = json.dumps(entry.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class EntryOutcome:
    id: uuid.UUID
    thread_id: uuid.UUID
    next_offset: str
    duplicate: bool

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "thread_id": str(self.thread_id), "offset": self.next_offset}


class _Retry(Exception):
    """The entry id is already recorded for this very request: roll back the probe, complete it as a retry."""


class Entries:
    def __init__(self, db: Database, streams: StreamsClient, audit: AuditLog, on_ready: Callable[[], None]) -> None:
        self.db = db
        self.streams = streams
        self.audit = audit
        self.on_ready = on_ready
        self._tasks: set[asyncio.Task[None]] = set()

    async def post(self, principal: Principal, thread_id: uuid.UUID, entry: EntryCreate) -> EntryOutcome:
        """Store the entry (exactly once) and answer as soon as it is in the stream; recording that (step 4)
        finishes in the background, since a crash before it only leaves work for the recovery sweep."""
        answered: asyncio.Future[EntryOutcome] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._post(principal, thread_id, entry, answered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # Shielded: a client that goes away does not stop its entry half-way.
        return await asyncio.shield(answered)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for entries whose answer is out but whose step 4 is still running (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _post(self, principal: Principal, thread_id: uuid.UUID, entry: EntryCreate,
                    answered: asyncio.Future[EntryOutcome]) -> None:
        digest = request_hash(entry)
        key = lock_key(entry.id)
        try:
            async with self.db.connection() as conn:
                locked = True
                try:
                    try:
                        async with conn.pipeline():
                            fresh = await self._record(conn, key, principal, thread_id, entry, digest)
                    except _Retry:
                        fresh = None
                    if fresh is None:
                        answered.set_result(await self._complete(conn, entry.id, duplicate=True))
                        return
                    try:
                        next_offset = await self._append(conn, entry.id, thread_id, fresh)
                    except ApiError as exc:
                        if exc.status != 503:
                            raise
                        # The append may or may not have reached the stream (a connection that dropped): look,
                        # then append if it is not there - once; a real outage answers 503 again.
                        answered.set_result(await self._complete(conn, entry.id, duplicate=False))
                        return
                    answered.set_result(EntryOutcome(entry.id, thread_id, next_offset, duplicate=False))
                    await self._mark_appended(conn, entry.id, next_offset, unlock=key)
                    locked = False
                except Refused as refused:
                    await self.audit.now(refused.event(principal), conn)
                    raise refused.api_error() from None
                finally:
                    if locked:
                        await self._unlock(conn, key)
        except BaseException as exc:
            if not answered.done():
                answered.set_exception(exc)
            elif not isinstance(exc, asyncio.CancelledError):
                # The client has its answer; the entry stays pending and the recovery sweep records it.
                log.warning("entry %s appended but not yet recorded: %s", entry.id, type(exc).__name__)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _unlock(self, conn: psycopg.AsyncConnection[Any], key: int) -> None:
        """Release the entry lock; a connection that cannot say it did is closed (which releases it), never
        handed back to the pool still holding it."""
        if conn.broken or conn.closed:
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except BaseException:
            await conn.close()
            raise

    async def _record(self, conn: psycopg.AsyncConnection[Any], key: int, principal: Principal,
                      thread_id: uuid.UUID, entry: EntryCreate, digest: str) -> dict[str, Any] | None:
        """Steps 1 and 2. Returns the message to append, or None when the entry id is already recorded (a retry).

        Runs in pipeline mode, in two round trips: the entry lock, BEGIN, _RECORD (and the mentioned agents'
        lookup) go out together; the outbox rows, the audit event and the commit follow."""
        subject = f"thread:{thread_id}"
        # Its own statement before the reads: they must see whatever the previous holder committed.
        await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        async with conn.transaction():
            names = mentions_in(entry.text)
            message: dict[str, Any] = {
                "type": "entry",
                "id": str(entry.id),
                "thread_id": str(thread_id),
                "kind": entry.kind,
                "author": {"id": str(principal.id), "kind": None},
                "text": entry.text,
                "mentions": names,
                "created_at": format_timestamp(datetime.now(UTC)),
            }
            if entry.data is not None:
                message["data"] = entry.data
            if entry.reply_to is not None:
                message["reply_to"] = str(entry.reply_to)
            record_cursor = await conn.execute(_RECORD, {
                "id": entry.id, "author": principal.id, "message": Jsonb(message), "hash": digest,
                "thread": thread_id,
            })
            agents_cursor = None
            if names:
                agents_cursor = await conn.execute(
                    "SELECT lower(name), id FROM public.agents WHERE house_id = "
                    "(SELECT house_id FROM public.threads WHERE id = %s) AND lower(name) = ANY(%s) "
                    "AND deleted_at IS NULL",
                    (thread_id, [n.lower() for n in names]),
                )
            row = await record_cursor.fetchone()  # the round trip's sync point
            if row is None:
                raise RuntimeError("audit.chain_head has no row: the audit migration has not run")
            house_id, role, existing_thread, existing_hash, recorded, head_seq, head_hash = row
            if house_id is None:
                raise Refused(None, "thread.entry.append", "no_such_thread", 404, subject)
            if role is None:
                raise Refused(house_id, "thread.entry.append", "not_a_member", 404, subject)
            if entry.kind == "system" and ROLE_RANK[role] < ROLE_RANK["admin"]:
                raise Refused(house_id, "thread.entry.append", "needs_admin", 403, subject, {"kind": "system"})
            if existing_thread is not None:
                if existing_thread != thread_id or existing_hash != digest:
                    raise ApiError(409, "entry_conflict", "this entry id is already used by a different entry")
                raise _Retry
            if recorded is None:
                # Inserted concurrently under a colliding lock key: the client should simply retry.
                raise ApiError(409, "entry_conflict", "this entry id was just used; retry")
            message = recorded
            unknown: list[str] = []
            if agents_cursor is not None:
                agents = {row[0]: row[1] for row in await agents_cursor.fetchall()}
                rows = []
                for name in names:
                    agent_id = agents.get(name.lower())
                    if agent_id is None:
                        unknown.append(name)
                    rows.append((entry.id, thread_id, house_id, name, agent_id, principal.id,
                                 "held" if agent_id else "gave_up", None if agent_id else "unknown agent"))
                async with conn.cursor() as c:
                    await c.executemany(
                        "INSERT INTO appliance.outbox (entry_id, thread_id, house_id, agent_name, agent_id, "
                        "mentioned_by, state, last_error, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                        "CASE WHEN %s THEN now() END)",
                        [(*row, row[6] == "gave_up") for row in rows],
                    )
            await insert_rows_async(conn, build_rows(int(head_seq), str(head_hash), [AuditEvent(
                principal.actor, "thread.entry.append", house_id, subject,
                {"entry_id": str(entry.id), "kind": entry.kind, "mentions": names, "unknown_mentions": unknown},
            )]))
        return message

    async def _append(self, conn: psycopg.AsyncConnection[Any], entry_id: uuid.UUID, thread_id: uuid.UUID,
                      message: dict[str, Any]) -> str:
        """Step 3 (the caller holds the entry's lock, and records the result)."""
        try:
            try:
                next_offset = await self.streams.append(thread_id, message)
            except StreamMissing:
                # Threads whose stream was never made (a crash between commit and creation) get it now.
                await self.streams.create(thread_id)
                next_offset = await self.streams.append(thread_id, message)
        except StreamError as exc:
            if exc.status == 0 or exc.status >= 500:
                raise ApiError(503, "streams_unavailable",
                               "the entry is recorded but not yet in the thread; retry with the same entry id",
                               {"Retry-After": "1"}) from None
            await self._mark_failed(conn, entry_id, f"stream refused the append ({exc.status})")
            raise ApiError(502, "append_refused", "the thread's stream refused the entry") from None
        return next_offset

    async def _mark_appended(self, conn: psycopg.AsyncConnection[Any], entry_id: uuid.UUID, next_offset: str,
                             unlock: int | None = None) -> None:
        """Step 4: one statement (its own transaction), then the entry lock's release when `unlock` is its key,
        in one round trip."""
        async with conn.pipeline():
            cursor = await conn.execute(_MARK_APPENDED, {"id": entry_id, "offset": next_offset})
            if unlock is not None:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (unlock,))
            row = await cursor.fetchone()
        if row and row[0]:
            self.on_ready()

    async def _mark_failed(self, conn: psycopg.AsyncConnection[Any], entry_id: uuid.UUID, reason: str) -> None:
        async with conn.transaction():
            await conn.execute("UPDATE appliance.thread_entries SET state = 'failed' WHERE id = %s", (entry_id,))
            await conn.execute(
                "UPDATE appliance.outbox SET state = 'gave_up', last_error = %s, finished_at = now() "
                "WHERE entry_id = %s AND state = 'held'",
                (reason, entry_id),
            )

    async def _complete(self, conn: psycopg.AsyncConnection[Any], entry_id: uuid.UUID, duplicate: bool
                        ) -> EntryOutcome:
        """Step 5 (the caller holds the entry's lock)."""
        row = await fetch_one(
            conn,
            "SELECT thread_id, state, message, floor_offset, next_offset FROM appliance.thread_entries WHERE id = %s",
            (entry_id,),
        )
        if row is None:
            raise ApiError(404, "not_found", "no such entry")
        thread_id = row["thread_id"]
        if row["state"] == "appended":
            return EntryOutcome(entry_id, thread_id, row["next_offset"], duplicate)
        if row["state"] == "failed":
            raise ApiError(409, "entry_failed", "this entry was refused by the thread's stream")
        try:
            messages, tail = await self.streams.read_after(thread_id, row["floor_offset"])
        except StreamMissing:
            messages, tail = [], ""
        except StreamError:
            raise ApiError(503, "streams_unavailable", "the thread is unavailable; retry with the same entry id",
                           {"Retry-After": "1"}) from None
        wanted = str(entry_id)
        if tail and any(isinstance(m, dict) and m.get("id") == wanted for m in messages):
            # Appended by an attempt that died before recording it. The tail is at or after the entry.
            await self._mark_appended(conn, entry_id, tail)
            return EntryOutcome(entry_id, thread_id, tail, duplicate)
        next_offset = await self._append(conn, entry_id, thread_id, row["message"])
        await self._mark_appended(conn, entry_id, next_offset)
        return EntryOutcome(entry_id, thread_id, next_offset, duplicate)

    async def recover_pending(self, older_than_s: float = 1.0, limit: int = 100) -> int:
        """Complete entries left pending by attempts that died (the recovery sweep); returns how many."""
        rows = await self.db.fetchall(
            "SELECT id FROM appliance.thread_entries WHERE state = 'pending' "
            "AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s",
            (older_than_s, limit),
        )
        done = 0
        for row in rows:
            key = lock_key(row["id"])
            async with self.db.connection() as conn:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                locked = await cur.fetchone()
                if not locked or not locked[0]:
                    continue  # its attempt is alive and will finish it
                try:
                    await self._complete(conn, row["id"], duplicate=False)
                    done += 1
                except ApiError as exc:
                    log.info("pending entry %s not completed yet: %s", row["id"], exc.code)
                finally:
                    await self._unlock(conn, key)
        return done

    async def run_recovery(self, interval_s: float = 5.0) -> None:
        while True:
            try:
                await self.recover_pending()
            except (psycopg.Error, OSError) as exc:
                log.warning("entry recovery sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(interval_s)
