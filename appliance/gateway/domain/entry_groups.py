"""Group commit for thread entries: steps 1, 2 and 4 of appliance/gateway/domain/entries.py for many entries at once.

Every entry's record ends with its audit event, which holds the tenant's audit chain head from its append until
the commit. Recorded one by one, concurrent entries queue on that lock, each commits its own WAL flush under it,
and the queueing itself costs Postgres CPU. So entries that arrive while a group is being recorded form the next
group: one transaction, one chain-head lock and one WAL flush for all of them. (Postgres CPU per entry with 16
concurrent writers, measured while designing this: 0.85-0.96 ms one by one, 0.25 ms in groups of 8.) A lone
entry is a group of one, recorded by one statement as before, so a single writer waits no longer.

A group's entry locks are session locks of its connection, so the group keeps that connection until each of its
entries has been appended and has left; each entry goes on alone as soon as the group commits (appends, is
answered). Then one statement marks the appended ones (step 4) and releases every lock the connection holds -
or, when the next group is recorded within HAND_ON_S and no entry mentions an agent, the next group's record
does both in its own transaction, on this connection (tenantdb migration 0014). An entry that needs the
connection meanwhile (a retry to complete, a refusal to audit, a failed append to record) takes it in turn.

An entry never waits for a lock inside a group (the group would hold the chain head while it waits):
* the same entry id already waiting or in a group of this gateway (a retry racing its first attempt) is
  recorded in a group of its own, which waits for the lock the way record_entry always has;
* a lock held by another session makes try_record_entry (tenantdb migration 0010) answer 'locked' without recording
  anything, and that entry too is recorded in a group of its own.
If a group's transaction fails, nothing of it was recorded and each of its entries is recorded alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from appliance.gateway.core.db import Connection, Database

log = logging.getLogger("appliance.gateway")

# A group holds the audit chain head while its entries are recorded, ~0.3 ms each: 8 keeps every other
# audited write's wait (and the first member's) to a few milliseconds and takes most of the saving.
MAX_GROUP: Final = 8
# How long the next group waits for more entries once the last one showed concurrent writers (it had more than
# one member). A group's fixed cost - its two commits, their round trips and WAL flushes, and the replication
# that follows each - was about 0.7 ms of Postgres CPU, against 0.5 ms per entry: groups formed as soon as the
# previous one committed held 2-3 entries with 16 writers. A lone writer's groups never wait. Counted from the
# previous group's commit, not from the first waiting entry's arrival: that made smaller groups (0.22 -> 0.33
# commits per append with 16 writers) and no more throughput.
GROUP_LINGER_S: Final = 0.002

# record_entry's parameters, in order (entries.record_params builds them by name).
RECORD_PARAMS: Final = ("key", "id", "thread", "author", "message", "hash", "roles", "mentions", "actor", "subject",
                        "detail", "audit", "middle")
# The answer's columns: the status, the house, and the author's kind, the one thing the recorded message adds to the
# message sent (decoding the whole message back was a twentieth of an append's CPU in the gateway).
_ANSWER = "SELECT o_status, o_house_id, o_message->'author'->>'kind' FROM appliance."
_COLUMNS = _ANSWER + "{}(" + \
    ", ".join(f"${n}" for n in range(1, len(RECORD_PARAMS) + 1)) + ")"
# In a group: never waits for an entry lock (answers 'locked'). Alone: waits for it.
_TRY_RECORD = _COLUMNS.format("try_record_entry")
_RECORD = _COLUMNS.format("record_entry")
# In a group recorded on the connection of a finished group: the first entry also releases that group's locks and
# records its step 4 (tenantdb migration 0014), the others only record themselves.
_TRY_RECORD_AFTER = _ANSWER + "try_record_entry_after(" + \
    ", ".join(f"${n}" for n in range(1, len(RECORD_PARAMS) + 4)) + ")"
# The same, in one function call (tenantdb migration 0015): whether to wait for the entry lock, the finished
# group's step 4 to carry (or not), then record_entry's parameters. Where the database has it, it replaces the three
# above: their nesting (five function calls, each a statement with its own executor start-up and search_path
# change) and their step 4 cost a third of Postgres's CPU per entry (the migration says how it was measured).
_RECORD_FLAT = _ANSWER + "record_entry_flat(" + \
    ", ".join(f"${n}" for n in range(1, len(RECORD_PARAMS) + 5)) + ")"
# How long a finished group's connection waits for the next group to carry its step 4 before doing it alone. A
# lone writer's next entry comes a few milliseconds after its answer; this bounds how late step 4 can be (which
# only delays the floor offsets of later entries, as the handed-on groups mention no agent).
HAND_ON_S: Final = 0.05

# Step 4 for any number of entries (ids and next offsets): mark them appended and release their activations;
# returns how many activations it released. Losing its commit in a Postgres crash is harmless (the entries are
# found pending and completed from the stream), so it does not wait for the WAL flush (set_config(..., true):
# this transaction only).
MARK_APPENDED = (
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting), "
    "done AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS d (id, next_offset)), "
    "entry AS (UPDATE appliance.thread_entries e SET state = 'appended', next_offset = d.next_offset, "
    " appended_at = now() FROM done d WHERE e.id = d.id AND e.state = 'pending' RETURNING e.id), "
    "released AS (UPDATE appliance.outbox o SET state = 'ready', next_attempt_at = now() FROM done d "
    " WHERE o.entry_id = d.id AND o.state = 'held' RETURNING o.id) "
    "SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM entry), (SELECT setting FROM relaxed)"
)
# A group's end: its step 4, and the release of every entry lock its connection holds. The locks go a moment
# before the commit: an attempt that takes one in between finds its entry still pending and completes it from
# the stream, where it is, as after a crash (its own update then waits for this one and finds nothing to do).
_FINISH = MARK_APPENDED + ", pg_advisory_unlock_all()"
# The same where the database has appliance.mark_appended (tenantdb migration 0015), which finds the entries by
# primary key: the join above let the planner scan the partial index of pending entries, which holds every entry
# appended since the last vacuum (see the migration). Used instead of the two above on such a database.
MARK_APPENDED_BY_ID = ("SELECT m.o_released, m.o_marked, set_config('synchronous_commit', 'off', true) "
                       "FROM appliance.mark_appended($1::uuid[], $2::text[]) m")
_FINISH_BY_ID = ("SELECT m.o_released, m.o_marked, set_config('synchronous_commit', 'off', true), "
                 "pg_advisory_unlock_all() FROM appliance.mark_appended($1::uuid[], $2::text[]) m")


def mark_appended_query(conn: Connection) -> str:
    """Step 4's statement for this connection's database."""
    return MARK_APPENDED_BY_ID if getattr(conn, "record_flat", False) else MARK_APPENDED


@dataclass(frozen=True)
class Recorded:
    """record_entry's answer for one entry (`author_kind`: the kind the recorded message gives its author, when it
    was recorded), and the group that holds its lock until the entry leaves it."""

    status: str
    house_id: uuid.UUID | None
    author_kind: str | None
    group: Group


class Group:
    """The connection holding a group's entry locks, lent to one member at a time."""

    def __init__(self, conn: Connection, members: int) -> None:
        self._conn = conn
        self._turn = asyncio.Lock()
        self._members = members
        self._everyone_left = asyncio.Event()
        self.appended: list[tuple[uuid.UUID, str]] = []
        if members == 0:
            self._everyone_left.set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """The group's connection (holding this entry's lock), for a block; autocommit, idle when handed back."""
        async with self._turn:
            yield self._conn

    def leave(self, appended: tuple[uuid.UUID, str] | None = None) -> None:
        """A member is done with the group; `appended` (entry id, next offset) is its step 4 to record."""
        if appended is not None:
            self.appended.append(appended)
        self._members -= 1
        if self._members == 0:
            self._everyone_left.set()

    async def everyone_left(self) -> None:
        await self._everyone_left.wait()


@dataclass(eq=False)
class _HandedOn:
    """A finished group's connection, still holding its entries' locks, offered to the next group to record."""

    conn: Connection
    members: list[_Waiting]
    appended: list[tuple[uuid.UUID, str]]
    taken: asyncio.Future[bool]

    def was_taken(self) -> bool:
        return self.taken.done() and not self.taken.cancelled() and self.taken.result()


@dataclass(eq=False)
class _Waiting:
    key: int
    params: dict[str, Any]
    outcome: asyncio.Future[Recorded]

    def values(self) -> tuple[Any, ...]:
        return tuple(self.params[name] for name in RECORD_PARAMS)


class GroupRecorder:
    def __init__(self, db: Database, on_ready: Callable[[], None], max_group: int = MAX_GROUP) -> None:
        self.db = db
        self.on_ready = on_ready
        self.max_group = max_group
        self._waiting: list[_Waiting] = []
        # Entry locks waiting or held by this gateway's groups, by key: a second entry with one of them is kept
        # out of any group (it would take the lock again within the same session instead of waiting for it).
        self._keys: Counter[int] = Counter()
        self._former: asyncio.Task[None] | None = None
        self._last_size = 0  # members of the last group formed
        self._offered: _HandedOn | None = None  # at most one finished group's connection waits for a taker
        self._draining = False
        self._groups: set[asyncio.Task[None]] = set()
        self.largest_group = 0  # for tests: whether entries really are grouped
        self.handed_on = 0  # for tests: finished groups whose step 4 the next group's record carried

    @property
    def queued(self) -> int:
        """Entries waiting for the next group."""
        return len(self._waiting)

    @property
    def recording(self) -> bool:
        """Whether a group is being recorded (entries arriving now wait for the next one)."""
        return self._former is not None

    async def record(self, key: int, params: dict[str, Any]) -> Recorded:
        """Steps 1 and 2 for one entry (record_entry's parameters), in the next group or alone. The caller must
        `leave()` the returned group exactly once, whatever happens."""
        outcome: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        waiting = _Waiting(key, params, outcome)
        alone = self._keys[key] > 0
        self._keys[key] += 1
        if alone:
            self._start(self._run([waiting], None, wait_for_lock=True))
        else:
            self._waiting.append(waiting)
            if self._former is None:
                self._former = asyncio.create_task(self._form(), name="entry-groups")
        try:
            return await outcome
        except asyncio.CancelledError:
            if outcome.done() and not outcome.cancelled() and outcome.exception() is None:
                outcome.result().group.leave()  # delivered just before the cancellation: its caller never saw it
            raise

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._groups.add(task)
        task.add_done_callback(self._groups.discard)

    async def _form(self) -> None:
        """One group is being recorded at a time; whoever arrives meanwhile is in the next one."""
        try:
            while self._waiting:
                if self._last_size > 1 and len(self._waiting) < self.max_group:
                    await asyncio.sleep(GROUP_LINGER_S)
                members, self._waiting = self._waiting[:self.max_group], self._waiting[self.max_group:]
                self._last_size = len(members)
                committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._start(self._run(members, committed, wait_for_lock=False))
                await committed
        finally:
            self._former = None
            for waiting in self._waiting:  # only when cancelled (shutdown)
                waiting.outcome.cancel()
                self._forget([waiting])
            self._waiting = []

    async def _run(self, members: list[_Waiting], committed: asyncio.Future[None] | None,
                   wait_for_lock: bool) -> None:
        alone: list[_Waiting] = []  # to record again, each in a group of its own
        # A finished group whose connection (and locks, and step 4) this group takes on; a group that waits for
        # its lock never does (it would hold that step 4 while waiting).
        after = None if wait_for_lock else self._take_offered()
        conn: Connection | None = after.conn if after is not None else None
        offer: _HandedOn | None = None  # this group's connection offered to the next group (which releases it)
        try:
            if conn is None:
                conn = await self.db.acquire()
            try:
                rows = await self._record(conn, members, wait_for_lock, after)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Nothing was recorded (nor the finished group's step 4), but locks may have been taken before the
                # error, and the finished group's may or may not have been released.
                released = await self._release_all(conn)
                if after is not None:
                    await self._finish_alone(conn if released else None, after.appended)
                if not released or len(members) == 1:
                    raise
                log.warning("a group of %d entries failed (%s); recording each alone", len(members),
                            type(exc).__name__)
                alone = members
                return
            except BaseException:
                if after is not None:
                    conn.terminate()  # maybe still holding the finished group's locks: never back to the pool
                raise
            finally:
                if after is not None:
                    self._forget(after.members)
                if committed is not None and not committed.done():
                    committed.set_result(None)  # the next group may form
            self.largest_group = max(self.largest_group, len(members))
            group = Group(conn, len(members))
            for waiting, (status, house_id, author_kind) in zip(members, rows, strict=True):
                if status == "locked":
                    alone.append(waiting)
                    group.leave()
                elif waiting.outcome.done():  # its poster is gone (shutdown): nobody will leave for it
                    group.leave()
                else:
                    waiting.outcome.set_result(Recorded(status, house_id, author_kind, group))
            try:
                await group.everyone_left()
            except BaseException:
                conn.terminate()  # holding the group's locks: never back to the pool
                raise
            joined = [waiting for waiting in members if waiting not in alone]
            if self._may_hand_on(conn, joined):
                offer = _HandedOn(conn, joined, group.appended, asyncio.get_running_loop().create_future())
                await self._offer(offer)
            if offer is None or not offer.was_taken():
                await self._finish(conn, group)
        except BaseException as exc:
            for waiting in members:
                if waiting.outcome.done() or waiting in alone:
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    waiting.outcome.cancel()
                else:
                    waiting.outcome.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if committed is not None and not committed.done():
                committed.set_result(None)
            if offer is None or not offer.was_taken():
                # Handed on, its entries' keys are forgotten by the group that releases their locks.
                self._forget([waiting for waiting in members if waiting not in alone])
                if conn is not None:
                    await self.db.release(conn)
            for waiting in alone:
                self._start(self._run([waiting], None, wait_for_lock=True))

    def _may_hand_on(self, conn: Connection, joined: list[_Waiting]) -> bool:
        """Whether a finished group's step 4 may wait for the next group: not while draining, not for entries
        that mention an agent (their activations are released by step 4: a separate one wakes the dispatcher
        at once), and only where the database has the function that carries it (migration 0014)."""
        return (not self._draining and self._offered is None and bool(getattr(conn, "record_after_finish", False))
                and not conn.is_closed() and all(not waiting.params["mentions"] for waiting in joined))

    async def _offer(self, offer: _HandedOn) -> None:
        """Offer a finished group's connection to the next group for up to HAND_ON_S (`offer.was_taken()` says
        whether it was)."""
        self._offered = offer
        withdrawal = asyncio.get_running_loop().call_later(HAND_ON_S, self._withdraw, offer)
        try:
            await offer.taken
        except BaseException:
            self._withdraw(offer)
            if not offer.was_taken():
                offer.conn.terminate()  # holding the group's locks: never back to the pool
            raise
        finally:
            withdrawal.cancel()

    def _withdraw(self, offer: _HandedOn) -> None:
        if self._offered is offer:
            self._offered = None
        if not offer.taken.done():
            offer.taken.set_result(False)

    def _take_offered(self) -> _HandedOn | None:
        offer, self._offered = self._offered, None
        if offer is None or offer.taken.done():
            return None
        if offer.conn.is_closed():
            self._withdraw(offer)  # its own finish finds it closed: the recovery sweep completes its entries
            return None
        offer.taken.set_result(True)
        self.handed_on += 1
        return offer

    async def _record(self, conn: Connection, members: list[_Waiting], wait_for_lock: bool,
                      after: _HandedOn | None = None) -> list[tuple[Any, ...]]:
        if getattr(conn, "record_flat", False):
            # The first entry carries the finished group's step 4 (if any) and releases its locks; all in one
            # transaction.
            finished: tuple[bool, list[uuid.UUID], list[str]] = (False, [], [])
            if after is not None:
                finished = (True, [entry_id for entry_id, _ in after.appended],
                            [offset for _, offset in after.appended])
            values = [(wait_for_lock, *finished, *members[0].values()),
                      *((wait_for_lock, False, [], [], *waiting.values()) for waiting in members[1:])]
            query = _RECORD_FLAT
        elif after is not None:
            # The first entry carries the finished group's step 4 and releases its locks; all in one transaction.
            finished = (True, [entry_id for entry_id, _ in after.appended],
                        [offset for _, offset in after.appended])
            values = [(*finished, *members[0].values()), *(((False, [], [], *waiting.values()))
                                                          for waiting in members[1:])]
            query = _TRY_RECORD_AFTER
        else:
            values = [waiting.values() for waiting in members]
            query = _RECORD if wait_for_lock else _TRY_RECORD
        if len(values) == 1:
            # Its own transaction: one statement, one round trip.
            row = await conn.fetchrow(query, *values[0])
            assert row is not None
            return [tuple(row)]
        # All of them in one round trip ending in a single Sync: Postgres runs them as one implicit transaction
        # (one commit, one WAL flush; an error in any rolls back all).
        rows = await conn.fetchmany(query, values)
        assert len(rows) == len(members)
        return [tuple(row) for row in rows]

    async def _finish_alone(self, conn: Connection | None, appended: list[tuple[uuid.UUID, str]]) -> None:
        """The step 4 a failed group was carrying, on its own (its locks are released already); if it cannot be
        done, the entries stay pending for the recovery sweep."""
        if not appended:
            return
        try:
            if conn is None or conn.is_closed():
                raise ConnectionError("connection lost")
            await conn.fetchrow(mark_appended_query(conn), [entry_id for entry_id, _ in appended],
                                [offset for _, offset in appended])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("%d entries appended but not yet recorded: %s", len(appended), type(exc).__name__)

    async def _release_all(self, conn: Connection) -> bool:
        """After a failed group: drop every lock its connection took (session locks outlive the rollback)."""
        try:
            if conn.is_closed():
                return True  # a closed session holds nothing
            await conn.execute("SELECT pg_advisory_unlock_all()")
            return True
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            conn.terminate()
            return False

    async def _finish(self, conn: Connection, group: Group) -> None:
        """Step 4 for the group's appended entries, and every lock released; a connection that cannot say it
        released them is closed (which releases them), never handed back to the pool still holding them."""
        ids = [entry_id for entry_id, _ in group.appended]
        offsets = [offset for _, offset in group.appended]
        try:
            row = await conn.fetchrow(_FINISH_BY_ID if getattr(conn, "record_flat", False) else _FINISH, ids, offsets)
        except BaseException as exc:
            conn.terminate()
            if ids and not isinstance(exc, asyncio.CancelledError):
                # In the stream but still pending: the recovery sweep (or a retry) records them.
                log.warning("%d entries appended but not yet recorded: %s", len(ids), type(exc).__name__)
            raise
        if row and row[0]:
            self.on_ready()

    def _forget(self, members: list[_Waiting]) -> None:
        for waiting in members:
            self._keys[waiting.key] -= 1
            if self._keys[waiting.key] <= 0:
                del self._keys[waiting.key]

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for groups still finishing (at shutdown); a connection offered to the next group finishes now."""
        self._draining = True
        if self._offered is not None:
            self._withdraw(self._offered)
        if self._groups:
            await asyncio.wait(list(self._groups), timeout=timeout)
