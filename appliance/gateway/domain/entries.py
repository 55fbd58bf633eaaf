"""Thread entries: appended to the thread's stream exactly once per entry id, with their mentions dispatched
through the outbox (appliance/tenantdb/migrations/0003_entries_outbox.sql).

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

Steps 1 and 2 are one statement, `appliance.record_entry` (tenantdb migration 0008_record_entry), and entries that
arrive together share steps 1, 2 and 4 (one transaction, one chain-head lock, one WAL flush: see
entry_groups.py). The client is answered as soon as its entry is in the stream, before step 4.

So appends of one entry are serialised by the lock, and every append but the first is preceded by a look at
the stream. The stream's own idempotent-producer state is not relied on (it can be lost in a crash, see
specs/durable-streams.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from appliance.audit.canonical import format_timestamp
from appliance.audit.chain import AuditEvent, split_body
from appliance.gateway.core.db import DATABASE_ERRORS, Connection, Database
from appliance.gateway.core.errors import ApiError
from appliance.gateway.domain.access import Principal, Refused, fetch_one
from appliance.gateway.domain.auditlog import AuditLog
from appliance.gateway.domain.entry_groups import Group, GroupRecorder, Recorded, mark_appended_query
from appliance.gateway.domain.models import EntryCreate
from appliance.gateway.streams import StreamError, StreamMissing, StreamsClient
from appliance.tenantdb.schema import ROLE_RANK

log = logging.getLogger("appliance.gateway")

# `@name` where name is an agent name (see AgentName); not inside a word or an e-mail address.
MENTION = re.compile(r"(?<![A-Za-z0-9_.@-])@([A-Za-z0-9][A-Za-z0-9_-]{0,62})")
MAX_MENTIONS = 20

# Lends the connection that holds an entry's lock, for a block (a group's, or the one step 5 runs on).
LendsConnection = Callable[[], contextlib.AbstractAsyncContextManager[Connection]]
# Who may post an entry of each kind.
_POSTERS = {"system": [role for role, rank in ROLE_RANK.items() if rank >= ROLE_RANK["admin"]]}
_ANY_ROLE = list(ROLE_RANK)
# Stand-ins for the audit values the database fills in (see 0008): neither can occur in the rest of the event.
_UNKNOWN_MARK = '"@@unknown@@"'
_HOUSE_MARK = uuid.UUID(int=0)


def audit_pieces(actor: str, subject: str, detail: dict[str, Any]) -> tuple[list[str], str]:
    """The entry's audit event as record_entry completes it: its canonical JSON up to the seq, in the three
    pieces around the unknown mentions and the house id, and the text after the seq (`split_body`)."""
    before, middle, _, _ = split_body(AuditEvent(
        actor, "thread.entry.append", _HOUSE_MARK, subject, {**detail, "unknown_mentions": _UNKNOWN_MARK[1:-1]}))
    first, rest = before.split(_UNKNOWN_MARK)
    second, third = rest.split(str(_HOUSE_MARK))
    return [first, second, third], middle


# An entry's audit pieces differ from those of the caller's previous entry in the same thread only by the entry's
# id: they are made once per (actor, subject, kind, mentions) with a stand-in for the id, which is then replaced.
_ENTRY_MARK: Final = '"@@entry@@"'


@functools.lru_cache(maxsize=4096)
def _audit_template(actor: str, subject: str, kind: str, names: tuple[str, ...]) -> tuple[tuple[str, ...], str] | None:
    """audit_pieces with the stand-in for the entry id; None where the stand-in also appears elsewhere (in an
    actor's name), so that replacing it would change more than the id."""
    detail = {"entry_id": _ENTRY_MARK[1:-1], "kind": kind, "mentions": list(names)}
    pieces, middle = audit_pieces(actor, subject, detail)
    if pieces[0].count(_ENTRY_MARK) != 1 or _ENTRY_MARK in "".join(pieces[1:]) + middle:
        return None
    return tuple(pieces), middle


def entry_audit(actor: str, subject: str, entry_id: uuid.UUID, kind: str, names: list[str]
                ) -> tuple[dict[str, Any], list[str], str]:
    """An entry's audit detail and its pieces (`audit_pieces`)."""
    detail = {"entry_id": str(entry_id), "kind": kind, "mentions": names}
    template = _audit_template(actor, subject, kind, tuple(names))
    if template is None:
        return (detail, *audit_pieces(actor, subject, detail))
    (first, *rest), middle = template
    # A UUID's canonical JSON is its text in quotes.
    return detail, [first.replace(_ENTRY_MARK, f'"{detail["entry_id"]}"'), *rest], middle


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
    # Not the audit's canonical form: entry data may hold floats, which are fine for telling requests apart. The
    # text is that of json.dumps(entry.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False), written out field by field in that sorted order (data, id, kind, reply_to, text; data is
    # plain JSON already): stored hashes tell a retry from a conflict, so this text never changes
    # (tests/unit/test_entry_pieces.py pins it).
    data = "null" if entry.data is None else json.dumps(entry.data, sort_keys=True, separators=(",", ":"),
                                                         ensure_ascii=False)
    reply_to = "null" if entry.reply_to is None else f'"{entry.reply_to}"'
    text = (f'{{"data":{data},"id":"{entry.id}","kind":"{entry.kind}","reply_to":{reply_to},"text":'
            f'{json.dumps(entry.text, ensure_ascii=False)}}}')
    return hashlib.sha256(text.encode()).hexdigest()


def record_params(principal: Principal, thread_id: uuid.UUID, entry: EntryCreate) -> dict[str, Any]:
    """record_entry's parameters for an entry: the message to append and its audit event (0008)."""
    subject = f"thread:{thread_id}"
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
    detail, audit, middle = entry_audit(principal.actor, subject, entry.id, entry.kind, names)
    return {
        "key": lock_key(entry.id), "id": entry.id, "thread": thread_id, "author": principal.id,
        "message": message, "hash": request_hash(entry), "roles": _POSTERS.get(entry.kind, _ANY_ROLE),
        "mentions": names, "actor": principal.actor, "subject": subject, "detail": detail, "audit": audit,
        "middle": middle,
    }


def _recorded_message(recorded: Recorded, thread_id: uuid.UUID, entry: EntryCreate, message: dict[str, Any]
                      ) -> dict[str, Any] | None:
    """The message to append for a newly recorded entry (`message`, as record_entry recorded it: with its author's
    kind), None for a retry of a recorded one; raises the refusals."""
    subject = f"thread:{thread_id}"
    status, house_id = recorded.status, recorded.house_id
    if status == "recorded":
        return {**message, "author": {**message["author"], "kind": recorded.author_kind}}
    if status == "retry":
        return None
    if status == "no_such_thread":
        raise Refused(None, "thread.entry.append", "no_such_thread", 404, subject)
    if status == "not_a_member":
        raise Refused(house_id, "thread.entry.append", "not_a_member", 404, subject)
    if status == "role":
        raise Refused(house_id, "thread.entry.append", "needs_admin", 403, subject, {"kind": entry.kind})
    if status == "conflict":
        raise ApiError(409, "entry_conflict", "this entry id is already used by a different entry")
    # "busy": inserted concurrently under a colliding lock key; the client should simply retry.
    raise ApiError(409, "entry_conflict", "this entry id was just used; retry")


@dataclass(frozen=True)
class EntryOutcome:
    id: uuid.UUID
    thread_id: uuid.UUID
    next_offset: str
    duplicate: bool

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "thread_id": str(self.thread_id), "offset": self.next_offset}


def _answer(answered: asyncio.Future[EntryOutcome], outcome: EntryOutcome) -> None:
    if not answered.done():  # else the client went away (its handler was cancelled)
        answered.set_result(outcome)


class Entries:
    def __init__(self, db: Database, streams: StreamsClient, audit: AuditLog, on_ready: Callable[[], None]) -> None:
        self.db = db
        self.streams = streams
        self.audit = audit
        self.on_ready = on_ready
        self.groups = GroupRecorder(db, on_ready)
        self._tasks: set[asyncio.Task[None]] = set()

    async def post(self, principal: Principal, thread_id: uuid.UUID, entry: EntryCreate) -> EntryOutcome:
        """Store the entry (exactly once) and answer as soon as it is in the stream; recording that (step 4)
        finishes in the background, since a crash before it only leaves work for the recovery sweep."""
        answered: asyncio.Future[EntryOutcome] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._post(principal, thread_id, entry, answered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A client that goes away cancels `answered`, not the task: its entry is never stopped half-way.
        return await answered

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for entries whose answer is out but whose step 4 is still running (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        await self.groups.drain(timeout)

    async def _post(self, principal: Principal, thread_id: uuid.UUID, entry: EntryCreate,
                    answered: asyncio.Future[EntryOutcome]) -> None:
        group: Group | None = None
        appended: tuple[uuid.UUID, str] | None = None
        try:
            try:
                params = record_params(principal, thread_id, entry)
                recorded = await self.groups.record(params["key"], params)
                group = recorded.group
                message = _recorded_message(recorded, thread_id, entry, params["message"])
                if message is None:  # a retry of an entry already recorded
                    async with group.connection() as conn:
                        _answer(answered, await self._complete(conn, entry.id, duplicate=True))
                    return
                try:
                    next_offset = await self._append(group.connection, entry.id, thread_id, message)
                except ApiError as exc:
                    if exc.status != 503:
                        raise
                    # The append may or may not have reached the stream (a connection that dropped): look, then
                    # append if it is not there - once; a real outage answers 503 again.
                    async with group.connection() as conn:
                        _answer(answered, await self._complete(conn, entry.id, duplicate=False))
                    return
                appended = (entry.id, next_offset)
                _answer(answered, EntryOutcome(entry.id, thread_id, next_offset, duplicate=False))
            except Refused as refused:
                assert group is not None  # only a recorded answer is refused
                async with group.connection() as conn:
                    await self.audit.now(refused.event(principal), conn)
                raise refused.api_error() from None
        except BaseException as exc:
            if not answered.done():
                answered.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if group is not None:
                group.leave(appended)

    async def _append(self, connection: LendsConnection,
                      entry_id: uuid.UUID, thread_id: uuid.UUID, message: dict[str, Any]) -> str:
        """Step 3 (the caller holds the entry's lock, and records the result; `connection` lends the connection
        holding the lock, to record a refused append)."""
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
            async with connection() as conn:
                await self._mark_failed(conn, entry_id, f"stream refused the append ({exc.status})")
            raise ApiError(502, "append_refused", "the thread's stream refused the entry") from None
        return next_offset

    async def _mark_appended(self, conn: Connection, entry_id: uuid.UUID, next_offset: str
                             ) -> None:
        """Step 4 for one entry completed by step 5 (groups do theirs together, see entry_groups.py)."""
        row = await conn.fetchrow(mark_appended_query(conn), [entry_id], [next_offset])
        if row and row[0]:
            self.on_ready()

    async def _mark_failed(self, conn: Connection, entry_id: uuid.UUID, reason: str) -> None:
        async with conn.transaction():
            await conn.execute("UPDATE appliance.thread_entries SET state = 'failed' WHERE id = $1", entry_id)
            await conn.execute(
                "UPDATE appliance.outbox SET state = 'gave_up', last_error = $1, finished_at = now() "
                "WHERE entry_id = $2 AND state = 'held'",
                reason, entry_id,
            )

    async def _complete(self, conn: Connection, entry_id: uuid.UUID, duplicate: bool
                        ) -> EntryOutcome:
        """Step 5 (the caller holds the entry's lock)."""
        row = await fetch_one(
            conn,
            "SELECT thread_id, state, message, floor_offset, next_offset FROM appliance.thread_entries WHERE id = $1",
            entry_id,
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
        next_offset = await self._append(lambda: contextlib.nullcontext(conn), entry_id, thread_id, row["message"])
        await self._mark_appended(conn, entry_id, next_offset)
        return EntryOutcome(entry_id, thread_id, next_offset, duplicate)

    async def _unlock(self, conn: Connection, key: int) -> None:
        """Release the entry lock; a connection that cannot say it did is closed (which releases it), never
        handed back to the pool still holding it."""
        if conn.is_closed():
            return
        try:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except BaseException:
            conn.terminate()
            raise

    async def recover_pending(self, older_than_s: float = 1.0, limit: int = 100) -> int:
        """Complete entries left pending by attempts that died (the recovery sweep); returns how many."""
        done = 0
        async with self.db.background() as conn:
            rows = await conn.fetch(
                "SELECT id FROM appliance.thread_entries WHERE state = 'pending' "
                "AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
                float(older_than_s), limit,
            )
            for row in rows:
                if conn.is_closed():
                    break  # closed by a failed unlock (which released its lock): the next sweep goes on
                key = lock_key(row["id"])
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
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
            except DATABASE_ERRORS as exc:
                log.warning("entry recovery sweep failed: %s", type(exc).__name__)
            await asyncio.sleep(interval_s)
