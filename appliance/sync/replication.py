"""Change capture: one publication + one logical replication slot (pgoutput v1), as committed transactions.

    setup = ensure_publication_and_slot(dsn, PUBLICATION, SLOT, [("public", "items")])  # sync/defaults.py
    async with ReplicationStream(dsn, slot=SLOT, publication=PUBLICATION, resume_after=stored_lsn) as stream:
        async for txn in stream:
            store(txn)                  # durably
            stream.confirm(txn.end_lsn)  # only now may Postgres forget it

Delivery is at-least-once: Postgres resends every transaction whose end LSN was not confirmed, after a
reconnect, an engine crash (kill -9) or a Postgres crash (the slot's confirmed position is only persisted at
checkpoints, so it can move back). Transactions come in commit order with strictly increasing `end_lsn`, so a
consumer that remembers the last `end_lsn` it stored drops repeats by comparing; passing it as `resume_after`
makes the stream do that.

A slot that Postgres has invalidated (`max_slot_wal_keep_size` exceeded) or that was dropped surfaces as
`SlotLostError`: the changes in between are gone, every shape must be rotated, and
`ensure_publication_and_slot` makes a fresh slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import select
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, NamedTuple, cast

import psycopg
import psycopg2  # type: ignore[import-untyped]  # no stubs; only used for the replication connection
import psycopg2.extensions  # type: ignore[import-untyped]
import psycopg2.extras  # type: ignore[import-untyped]
from psycopg import sql

from appliance.sync import pgoutput
from appliance.sync.lsn import format_lsn

log = logging.getLogger(__name__)

# The walsender formats column values with its own session settings, so these decide the text of every value
# the engine serves. They are the settings Electric uses, which its clients parse.
TEXT_OUTPUT_SETTINGS: Final = {
    "client_encoding": "UTF8",
    "bytea_output": "hex",
    "DateStyle": "ISO,DMY",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "1",
}

# A REPLICATION connection that goes silent is only noticed by TCP; these bound how long that takes.
_TCP_KEEPALIVES: Final = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "connect_timeout": "10",
}

# Errors after which reconnecting can help: connection loss (no SQLSTATE, class 08), server shutting down or
# restarting (57P01-57P03), too many connections (53xxx), the previous walsender still holding the slot
# (55006), WAL already removed (58P01, seen while a slot is being invalidated, before wal_status says 'lost').
_TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "55006", "58P01"})
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "53"})


_CONNECTION_ERRORS: Final = frozenset(
    {
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
        psycopg2.DatabaseError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        psycopg.DatabaseError,
    }
)


class ReplicationError(Exception):
    """Change capture cannot go on without someone changing something (configuration, catalog, code)."""


class ReplicationSetupError(ReplicationError):
    """The publication or slot exists in a form this engine cannot use, or a table is missing."""


class SlotLostError(ReplicationError):
    """The slot is gone (dropped) or invalidated (WAL it needed was removed): changes were lost for good."""

    def __init__(self, slot: str, reason: str) -> None:
        super().__init__(f"replication slot {slot!r} {reason}")
        self.slot = slot
        self.reason = reason


# --- publication and slot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicationSetup:
    """What `ensure_publication_and_slot` changed."""

    publication_created: bool
    tables_added: tuple[tuple[str, str], ...]
    replica_identity_full_set: tuple[tuple[str, str], ...]
    slot_created: bool
    # The slot existed but had been invalidated; it was dropped and made again. Everything between its old
    # position and now is gone, so every shape must be rotated.
    slot_recreated: bool

    @property
    def changed(self) -> bool:
        return bool(
            self.publication_created
            or self.tables_added
            or self.replica_identity_full_set
            or self.slot_created
            or self.slot_recreated
        )


def ensure_publication_and_slot(
    dsn: str, publication: str, slot: str, tables: Iterable[tuple[str, str]]
) -> ReplicationSetup:
    """Make sure `publication` publishes `tables` (schema, table) with REPLICA IDENTITY FULL and that `slot`
    is a usable pgoutput slot in this database. Idempotent; only adds tables, never removes them.

    REPLICA IDENTITY FULL makes Postgres log whole old rows, so updates carry the values of unchanged TOASTed
    columns and deletes carry whole rows (Electric requires it for the same reason).

        >>> ensure_publication_and_slot(dsn, PUBLICATION, SLOT, [("public", "items")])
        ReplicationSetup(publication_created=False, tables_added=(('public', 'items'),), ...)
    """
    wanted = list(dict.fromkeys(tables))
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        publication_created, tables_added, identity_set = _ensure_publication(conn, publication, wanted)
        slot_created, slot_recreated = _ensure_slot(conn, slot)
    setup = ReplicationSetup(
        publication_created=publication_created,
        tables_added=tuple(tables_added),
        replica_identity_full_set=tuple(identity_set),
        slot_created=slot_created,
        slot_recreated=slot_recreated,
    )
    if setup.changed:
        log.info("replication setup changed: %s", setup)
    return setup


def _ensure_publication(
    conn: psycopg.Connection[Any], publication: str, tables: list[tuple[str, str]]
) -> tuple[bool, list[tuple[str, str]], list[tuple[str, str]]]:
    with conn.transaction():
        # Two engines (or an engine and an operator command) adding tables at once would race between the
        # membership check and ALTER PUBLICATION; a lock per publication serialises them.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"appliance.sync:{publication}"])
        row = conn.execute("SELECT oid, puballtables FROM pg_publication WHERE pubname = %s", [publication]).fetchone()
        created = row is None
        if row is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {}").format(sql.Identifier(publication)))
            all_tables = False
        else:
            all_tables = bool(row[1])

        relations: list[tuple[tuple[str, str], int, str]] = []
        for schema, table in tables:
            found = conn.execute(
                "SELECT c.oid, c.relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                [schema, table],
            ).fetchone()
            if found is None:
                raise ReplicationSetupError(f"table {schema}.{table} does not exist")
            relations.append(((schema, table), int(found[0]), str(found[1])))

        published = {
            int(oid)
            for (oid,) in conn.execute(
                "SELECT r.prrelid FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
                " WHERE p.pubname = %s",
                [publication],
            )
        }
        identity_set = [name for name, _, identity in relations if identity != "f"]
        for schema, table in identity_set:
            conn.execute(
                sql.SQL("ALTER TABLE {}.{} REPLICA IDENTITY FULL").format(sql.Identifier(schema), sql.Identifier(table))
            )
        # A FOR ALL TABLES publication already covers every table and refuses ADD TABLE.
        added = [] if all_tables else [name for name, oid, _ in relations if oid not in published]
        if added:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(publication),
                    sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in added),
                )
            )
    return created, added, identity_set


def _ensure_slot(conn: psycopg.Connection[Any], slot: str) -> tuple[bool, bool]:
    row = conn.execute(
        "SELECT plugin, slot_type, database, wal_status, active FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    ).fetchone()
    recreated = False
    if row is not None:
        plugin, slot_type, database, wal_status, active = row
        current_db = conn.execute("SELECT current_database()").fetchone()
        if slot_type != "logical" or plugin != "pgoutput":
            raise ReplicationSetupError(f"slot {slot!r} is a {slot_type} slot with plugin {plugin!r}, not pgoutput")
        if current_db is None or database != current_db[0]:
            raise ReplicationSetupError(f"slot {slot!r} belongs to database {database!r}")
        if wal_status != "lost":
            return False, False
        if active:
            raise ReplicationSetupError(f"slot {slot!r} is lost but still held by a walsender; stop its consumer")
        log.warning("replication slot %s was invalidated; dropping and creating it again", slot)
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
        recreated = True
    try:
        # Outside any transaction: Postgres refuses to create a logical slot in one that has written.
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    except psycopg.errors.DuplicateObject:
        return False, recreated  # someone else made it in between; it is checked on the next call
    return not recreated, recreated


class SlotHealth(NamedTuple):
    """What `appliance status` shows about the slot. Byte counts are None when the slot does not exist or has
    no position (an invalidated slot has no restart_lsn)."""

    exists: bool
    wal_status: str | None  # reserved | extended | unreserved | lost
    retained_wal_bytes: int | None  # WAL kept for the slot: current WAL position - restart_lsn
    confirmed_flush_lag_bytes: int | None  # not yet confirmed by the engine: current position - confirmed_flush_lsn
    active: bool  # a walsender is streaming from it


def slot_health(dsn: str, slot: str) -> SlotHealth:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return _slot_health(conn, slot)


def _slot_health(conn: psycopg.Connection[Any], slot: str) -> SlotHealth:
    row = conn.execute(
        "SELECT wal_status,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
        " active"
        " FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    ).fetchone()
    if row is None:
        return SlotHealth(
            exists=False, wal_status=None, retained_wal_bytes=None, confirmed_flush_lag_bytes=None, active=False
        )
    wal_status, retained, lag, active = row
    return SlotHealth(
        exists=True,
        wal_status=wal_status,
        retained_wal_bytes=retained,
        confirmed_flush_lag_bytes=lag,
        active=bool(active),
    )


# --- what the stream delivers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_name: str  # pg_type.typname: 'int4', 'varchar', 'timestamptz', '_text' for text[], an enum's own name
    type_modifier: int  # atttypmod, -1 when none (varchar(20) is 24: the length plus a 4-byte header)
    # In the replica identity. Under REPLICA IDENTITY FULL that is every column, so it does not tell the
    # primary key; use RelationInfo.primary_key for that.
    is_identity: bool


@dataclass(frozen=True, slots=True)
class RelationInfo:
    oid: int
    schema: str
    table: str
    replica_identity: Literal["d", "n", "f", "i"]  # default, nothing, full, index
    columns: tuple[ColumnInfo, ...]
    # Primary key columns in key order, read from the catalog when the Relation message arrived (the stream
    # does not carry it); empty when the table has none.
    primary_key: tuple[str, ...]
    column_names: tuple[str, ...] = field(init=False, compare=False, repr=False)  # read for every row

    def __post_init__(self) -> None:
        object.__setattr__(self, "column_names", tuple(column.name for column in self.columns))


Row = dict[str, str | None]
ChangeKind = Literal["insert", "update", "delete", "truncate", "schema"]


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, a truncate, or a schema change of one table.

    Values are the Postgres text output (see TEXT_OUTPUT_SETTINGS) or None for NULL.
    - insert: `new` is the row.
    - update: `new` is the row after; `old` the row before when the table is REPLICA IDENTITY FULL, only the
      old key columns when the key changed under another identity, else None. Unchanged TOASTed values are
      filled into `new` from `old`; without a whole old row they cannot be, and the column is left out.
    - delete: `old` is the row (FULL) or its key columns.
    - truncate: the whole table was emptied; no rows.
    - schema: the table's definition changed (columns, types, key, identity or name): `relation` is the new
      definition and `previous_relation` the one before. Seen the first time the table is written after the
      change, in WAL order among the other changes. Changes after it in the stream use the new definition.
    """

    kind: ChangeKind
    relation: RelationInfo
    old: Row | None = None
    new: Row | None = None
    previous_relation: RelationInfo | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    xid: int  # the 32-bit xid, what pg_current_xact_id()::xid::text shows the writer
    commit_lsn: int  # start of the commit record
    end_lsn: int  # end of the commit record: confirm this once the transaction is stored
    commit_ts: datetime
    changes: list[Change] = field(default_factory=list)
    origin: str | None = None  # replication origin, when the writer set one


# --- the stream -----------------------------------------------------------------------------------------------


@dataclass
class _TransactionInProgress:
    begin: pgoutput.Begin
    changes: list[Change] = field(default_factory=list)
    origin: str | None = None


class _Stopped(Exception):
    pass


_CLOSED: Final = object()


class ReplicationStream:
    """Committed transactions from `slot`, filtered by `publication`, as an async iterator.

    Why a thread: psycopg2's replication calls are synchronous C calls, decoding a large transaction is CPU
    work, and the status updates that keep the walsender from timing out the connection (and that answer its
    keepalives) must keep flowing while the engine's event loop is busy. So one thread owns the replication
    connection end to end (reads, decoding, feedback, reconnects) and hands whole transactions to the loop;
    the loop never touches the connection, and `confirm()` only posts a number to the thread.

    Flow control: the thread stops reading while more than `max_buffered_changes` delivered changes wait to
    be consumed, and (see `_must_hold_reads`) while delivered transactions wait to be confirmed in the
    states where reading on could let psycopg2 report them as flushed: after a Relation message (the first
    change to a table on a connection, or after its definition or cache changed), after a reconnect, and
    at a transaction that began before an already confirmed one committed. So confirm each transaction as
    soon as it is stored, and never wait for a later transaction before confirming an earlier stored one:
    the later one may be held until you do.
    """

    def __init__(
        self,
        dsn: str,
        *,
        slot: str,
        publication: str,
        resume_after: int = 0,
        status_interval: float = 10.0,
        max_buffered_changes: int = 50_000,
        reconnect_delay: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        """`resume_after`: end LSN of the last transaction the caller has durably stored (0 for none);
        transactions ending at or before it are skipped and it counts as confirmed.
        `status_interval`: seconds between status updates while nothing else is sent (well under the
        server's wal_sender_timeout, 60 s by default). `reconnect_delay`: first and longest wait between
        reconnect attempts; it doubles in between."""
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.status_interval = status_interval
        self.max_buffered_changes = max_buffered_changes
        self.reconnect_delay = reconnect_delay

        self._lock = threading.Lock()
        self._confirmed = resume_after  # written by any thread under _lock, read by the reader thread
        self._buffered_changes = 0  # delivered, not yet taken by the consumer; under _lock
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        # Owned by the reader thread.
        self._delivered_end = resume_after  # end_lsn of the last transaction handed over (or resume_after)
        self._sent_flush = 0  # flush position last given to psycopg2 on the current connection
        self._last_data_start = 0  # mirrors psycopg2's last_msg_data_start, see _must_hold_reads
        self._last_feedback = 0.0
        self._feedback_interval = status_interval
        self._txn: _TransactionInProgress | None = None
        self._relations: dict[int, RelationInfo] = {}
        self._type_names: dict[int, str] = {}  # from Type messages: fallback for types gone from pg_type
        self._catalog: psycopg.Connection[Any] | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

        # Counters for status and benchmarks; written by the reader thread only.
        self.transactions_delivered = 0
        self.changes_delivered = 0
        self.reconnects = 0

    # -- consumer side (event loop) --

    async def __aenter__(self) -> ReplicationStream:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the reader thread; call from the event loop that will consume the stream."""
        if self._thread is not None:
            raise RuntimeError("stream already started")
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._thread = threading.Thread(target=self._run, name=f"replication-{self.slot}", daemon=True)
        self._thread.start()

    def __aiter__(self) -> ReplicationStream:
        return self

    async def __anext__(self) -> Transaction:
        if self._queue is None:
            raise RuntimeError("stream not started")
        if self._failure is not None:
            raise self._failure
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # later calls end too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._failure = item
            raise item
        txn = cast(Transaction, item)
        with self._lock:
            was_full = self._buffered_changes >= self.max_buffered_changes
            self._buffered_changes -= max(1, len(txn.changes))
        if was_full:
            self._wake()
        return txn

    def get_nowait(self) -> Transaction | None:
        """The next transaction if one is already delivered, else None (never waits). Lets a consumer store
        everything that is already here in one batch (one fsync per shape log) before confirming it all;
        it never needs to wait for a later transaction to do so."""
        if self._queue is None:
            raise RuntimeError("stream not started")
        if self._failure is not None:
            raise self._failure
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if item is _CLOSED or isinstance(item, BaseException):
            # Leave the end (or the failure) for __anext__ to report, in order.
            self._queue.put_nowait(item)
            return None
        txn = cast(Transaction, item)
        with self._lock:
            was_full = self._buffered_changes >= self.max_buffered_changes
            self._buffered_changes -= max(1, len(txn.changes))
        if was_full:
            self._wake()
        return txn

    def confirm(self, lsn: int) -> None:
        """Everything up to `lsn` (a transaction's `end_lsn`) is durably stored: Postgres may forget it.
        Lower values than already confirmed are ignored. Safe to call from any thread."""
        with self._lock:
            if lsn <= self._confirmed:
                return
            self._confirmed = lsn
        self._wake()

    @property
    def confirmed_lsn(self) -> int:
        return self._confirmed

    @property
    def flushed_lsn(self) -> int:
        """The flush position last reported to Postgres on the current connection (0 before the first)."""
        return self._sent_flush

    async def aclose(self) -> None:
        """Stop the thread (after a last status update) and close the connections."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_read = self._wake_write = -1

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _post(self, item: object) -> None:
        loop, queue = self._loop, self._queue
        assert loop is not None and queue is not None
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            self._stopping = True  # the event loop is gone, so is the consumer

    # -- reader thread --

    def _run(self) -> None:
        delay = self.reconnect_delay[0]
        try:
            while not self._stopping:
                connection = None
                started = time.monotonic()
                try:
                    connection, cursor = self._start_replication()
                    self._stream(connection, cursor)
                except (psycopg2.Error, psycopg.Error) as exc:
                    self._raise_unless_transient(exc)
                    if self._stopping:
                        break
                    if time.monotonic() - started > 60:
                        delay = self.reconnect_delay[0]  # it had been working for a while: a fresh failure
                    log.warning(
                        "replication connection for slot %s lost (%s); reconnecting in %.1fs",
                        self.slot,
                        str(exc).strip(),
                        delay,
                    )
                    self._sleep(delay * random.uniform(0.8, 1.2))  # jitter so engines do not reconnect in step
                    delay = min(delay * 2, self.reconnect_delay[1])
                    self.reconnects += 1
                except _Stopped:
                    break
                finally:
                    self._txn = None  # a partial transaction is resent whole on the next connection
                    if connection is not None:
                        self._close_replication(connection)
        except BaseException as exc:  # every failure must reach the consumer, not die with the thread
            self._post(exc)
        else:
            self._post(_CLOSED)
        finally:
            if self._catalog is not None:
                with contextlib.suppress(Exception):
                    self._catalog.close()
                self._catalog = None

    def _start_replication(self) -> tuple[Any, Any]:
        params = psycopg2.extensions.parse_dsn(self.dsn)
        for key, value in _TCP_KEEPALIVES.items():
            params.setdefault(key, value)
        settings = " ".join(f"-c {name}={value}" for name, value in TEXT_OUTPUT_SETTINGS.items())
        params["options"] = f"{params.get('options', '')} {settings}".strip()
        connection = psycopg2.connect(connection_factory=psycopg2.extras.LogicalReplicationConnection, **params)
        try:
            cursor = connection.cursor()
            # The server drops a client it has not heard from in wal_sender_timeout, and only asks for a
            # reply (which psycopg2 answers while reading) after half of it; status updates are sent on our
            # own clock, also while reads are held, so they must come well inside that.
            cursor.execute("SHOW wal_sender_timeout")
            timeout = _duration_seconds(cursor.fetchone()[0])
            self._feedback_interval = min(self.status_interval, timeout / 4) if timeout > 0 else self.status_interval
            quoted_publication = '"' + self.publication.replace('"', '""') + '"'
            # Starting after what was already handed over (rather than at the slot's confirmed position) keeps
            # a reconnect from decoding again what the consumer already has; _must_hold_reads covers the gap.
            cursor.start_replication(
                slot_name=self.slot,
                decode=False,
                start_lsn=self._delivered_end,
                options={"proto_version": str(pgoutput.PROTO_VERSION), "publication_names": quoted_publication},
                status_interval=max(1.0, self._feedback_interval),  # psycopg2's own timer; it refuses < 1 s
            )
        except BaseException:
            connection.close()
            raise
        self._sent_flush = 0
        self._last_data_start = 0
        self._last_feedback = 0.0
        log.info("streaming slot %s from %s", self.slot, format_lsn(self._delivered_end))
        return connection, cursor

    def _close_replication(self, connection: Any) -> None:
        with contextlib.suppress(Exception):
            connection.close()

    def _stream(self, connection: Any, cursor: Any) -> None:
        socket_fd = connection.fileno()
        while True:
            if self._stopping:
                self._send_feedback(cursor, force=True)
                raise _Stopped
            self._send_feedback(cursor)
            if self._must_hold_reads():
                self._wait([], self._until_feedback_due())
                continue
            message = cursor.read_message()
            if message is None:
                self._advance_past_unpublished(cursor)
                self._wait([socket_fd], self._until_feedback_due())
                continue
            self._last_data_start = message.data_start
            self._handle(pgoutput.decode_message(message.payload))

    def _must_hold_reads(self) -> bool:
        """Whether reading on now could let a confirmation go out for something not yet stored.

        psycopg2's read_message answers server keepalives by itself and, when the flush position we last
        gave it is >= the data_start of the last XLogData it read, moves the flush position up to the
        keepalive's WAL end (pqpath.c). That is right for a consumer that confirms each message before
        reading the next, but data_start does not increase through the stream: Relation messages carry 0,
        and a transaction that began before an earlier one committed starts below that one's end. So after
        such a message, with delivered transactions still unconfirmed, a keepalive would confirm them. Until
        the consumer confirms them we do not read; the status updates keep the connection alive meanwhile.
        """
        with self._lock:
            confirmed = self._confirmed
            if self._buffered_changes >= self.max_buffered_changes:
                return True
        return self._sent_flush >= self._last_data_start and self._delivered_end > confirmed

    def _send_feedback(self, cursor: Any, *, force: bool = False) -> None:
        confirmed = self._confirmed
        now = time.monotonic()
        if confirmed > self._sent_flush:
            self._report_flush(cursor, confirmed)
        elif force or now - self._last_feedback >= self._feedback_interval:
            cursor.send_feedback(force=True)
            self._last_feedback = now

    def _report_flush(self, cursor: Any, lsn: int) -> None:
        # write = flush: the walsender only pings a caught-up client (which is what lets us move past
        # unpublished WAL) while both are behind what it has sent, so write must not run ahead.
        cursor.send_feedback(write_lsn=lsn, flush_lsn=lsn, apply_lsn=lsn, force=True)
        self._sent_flush = lsn
        self._last_feedback = time.monotonic()

    def _advance_past_unpublished(self, cursor: Any) -> None:
        """With everything handed over confirmed and no transaction half read, confirm up to the WAL end the
        server last reported: it has decoded that far and found nothing more for us. Without this, writes to
        unpublished tables (which pgoutput skips entirely, as empty transactions) would pin WAL forever.
        Transactions committing after that point are sent in full later; ones that began before it and
        commit after it are decoded from restart_lsn, which Postgres keeps for them."""
        if self._txn is not None:
            return
        wal_end = int(cursor.wal_end)
        if wal_end > self._sent_flush and self._confirmed >= self._delivered_end:
            self._report_flush(cursor, wal_end)

    def _until_feedback_due(self) -> float:
        return max(0.0, self._last_feedback + self._feedback_interval - time.monotonic())

    def _wait(self, fds: list[int], timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_read, *fds], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_read in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 4096):
                    pass

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            self._wait([], left)

    def _raise_unless_transient(self, exc: psycopg2.Error | psycopg.Error) -> None:
        """Slot gone or invalidated → SlotLostError; other errors that reconnecting cannot fix →
        ReplicationError; connection trouble → return, and the caller reconnects."""
        code = exc.pgcode if isinstance(exc, psycopg2.Error) else exc.sqlstate
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                health = _slot_health(conn, self.slot)
        except psycopg.Error as check_exc:
            log.warning("cannot check slot %s: %s", self.slot, str(check_exc).strip())
            health = None
        if health is not None and not health.exists:
            raise SlotLostError(self.slot, "does not exist (dropped?)") from exc
        if health is not None and health.wal_status == "lost":
            raise SlotLostError(self.slot, "was invalidated: the WAL it needed was removed") from exc
        if code is not None:
            if code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES:
                return
        # Without a SQLSTATE the server said nothing: the connection broke (psycopg2 reports a dropped
        # connection as a bare DatabaseError in some paths). Misuse errors (ProgrammingError) are ours.
        elif type(exc) in _CONNECTION_ERRORS:
            return
        raise ReplicationError(f"replication of slot {self.slot!r} failed: {str(exc).strip()}") from exc

    # -- decoding messages into transactions --

    def _handle(self, message: pgoutput.Message) -> None:
        txn = self._txn
        if isinstance(message, pgoutput.Begin):
            if txn is not None:
                raise ReplicationError(f"Begin of xid {message.xid} inside xid {txn.begin.xid}")
            self._txn = _TransactionInProgress(message)
            return
        if txn is None:
            raise ReplicationError(f"{type(message).__name__} message outside a transaction")
        if isinstance(message, pgoutput.Insert):
            relation = self._relation(message.relation_oid)
            txn.changes.append(Change("insert", relation, new=_row(relation, message.new)))
        elif isinstance(message, pgoutput.Update):
            relation = self._relation(message.relation_oid)
            old = self._old_row(relation, message.old, message.key)
            txn.changes.append(Change("update", relation, old=old, new=_new_row(relation, message.new, message.old)))
        elif isinstance(message, pgoutput.Delete):
            relation = self._relation(message.relation_oid)
            txn.changes.append(Change("delete", relation, old=self._old_row(relation, message.old, message.key)))
        elif isinstance(message, pgoutput.Commit):
            self._txn = None
            self._commit(txn, message)
        elif isinstance(message, pgoutput.Relation):
            self._on_relation(txn, message)
        elif isinstance(message, pgoutput.Truncate):
            txn.changes.extend(Change("truncate", self._relation(oid)) for oid in message.relation_oids)
        elif isinstance(message, pgoutput.Type):
            self._type_names[message.oid] = message.name
        elif isinstance(message, pgoutput.Origin):
            txn.origin = message.name
        # LogicalMessage: only sent when the 'messages' option is on, which we never ask for.

    def _commit(self, txn: _TransactionInProgress, commit: pgoutput.Commit) -> None:
        if commit.commit_lsn != txn.begin.final_lsn:
            raise ReplicationError(
                f"commit at {format_lsn(commit.commit_lsn)} does not match begin {format_lsn(txn.begin.final_lsn)}"
            )
        if commit.end_lsn <= self._delivered_end:
            return  # the consumer already has it: resent because it was not confirmed before a reconnect
        transaction = Transaction(
            xid=txn.begin.xid,
            commit_lsn=commit.commit_lsn,
            end_lsn=commit.end_lsn,
            commit_ts=commit.commit_ts,
            changes=txn.changes,
            origin=txn.origin,
        )
        with self._lock:
            self._buffered_changes += max(1, len(txn.changes))
        self._delivered_end = commit.end_lsn
        self.transactions_delivered += 1
        self.changes_delivered += len(txn.changes)
        self._post(transaction)

    def _relation(self, oid: int) -> RelationInfo:
        relation = self._relations.get(oid)
        if relation is None:
            raise ReplicationError(f"change for relation {oid} before its Relation message")
        return relation

    def _on_relation(self, txn: _TransactionInProgress, message: pgoutput.Relation) -> None:
        relation = self._describe(message)
        previous = self._relations.get(message.oid)
        self._relations[message.oid] = relation
        # pgoutput resends a Relation after any cache invalidation and once per connection; only a different
        # definition is a schema change.
        if previous is not None and previous != relation:
            log.info("schema of %s.%s changed", relation.schema, relation.table)
            txn.changes.append(Change("schema", relation, previous_relation=previous))

    def _describe(self, message: pgoutput.Relation) -> RelationInfo:
        """The Relation message plus what it lacks: type names (from pg_type, by oid) and the primary key."""
        catalog = self._catalog_connection()
        type_oids = sorted({column.type_oid for column in message.columns})
        names = dict(
            catalog.execute("SELECT oid::int8, typname::text FROM pg_type WHERE oid = ANY(%s)", [type_oids]).fetchall()
        )
        primary_key = tuple(
            name
            for (name,) in catalog.execute(
                "SELECT a.attname::text FROM pg_index i"
                " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.position",
                [message.oid],
            )
        )
        columns = tuple(
            ColumnInfo(
                name=column.name,
                type_oid=column.type_oid,
                # A type dropped since the change was written is only known from the stream's Type message.
                type_name=names.get(column.type_oid) or self._type_names.get(column.type_oid) or str(column.type_oid),
                type_modifier=column.atttypmod,
                is_identity=column.is_key,
            )
            for column in message.columns
        )
        return RelationInfo(
            oid=message.oid,
            schema=message.namespace,
            table=message.name,
            replica_identity=cast(Literal["d", "n", "f", "i"], message.replica_identity),
            columns=columns,
            primary_key=primary_key,
        )

    def _catalog_connection(self) -> psycopg.Connection[Any]:
        # A plain connection next to the replication one: walsender connections only run simple catalog-free
        # commands in this mode, and lookups must not wait behind the stream anyway.
        if self._catalog is None or self._catalog.closed:
            self._catalog = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        return self._catalog

    @staticmethod
    def _old_row(relation: RelationInfo, old: pgoutput.TupleData | None, key: pgoutput.TupleData | None) -> Row | None:
        if old is not None:
            return _row(relation, old)
        if key is not None:
            # A key tuple sends every non-key column as NULL; those NULLs are not the row's values.
            return {
                column.name: cast(str | None, value)
                for column, value in zip(relation.columns, key, strict=True)
                if column.is_identity
            }
        return None


_DURATION = re.compile(r"^(\d+)\s*(ms|s|min|h|d)?$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _duration_seconds(shown: str) -> float:
    """A time setting as SHOW prints it ('60s', '500ms', '1min', '0') in seconds; bare numbers are ms, the
    unit of wal_sender_timeout."""
    match = _DURATION.match(shown.strip())
    if match is None:
        raise ReplicationError(f"unexpected duration from the server: {shown!r}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2) or "ms"]


def _row(relation: RelationInfo, values: pgoutput.TupleData) -> Row:
    if len(values) != len(relation.columns):
        raise ReplicationError(
            f"{relation.schema}.{relation.table}: {len(values)} values for {len(relation.columns)} columns"
        )
    # Text output only (we never ask for binary), and old rows / inserts never hold unchanged-TOAST markers.
    return dict(zip(relation.column_names, cast(tuple[str | None, ...], values), strict=True))


def _new_row(relation: RelationInfo, new: pgoutput.TupleData, old: pgoutput.TupleData | None) -> Row:
    if pgoutput.UNCHANGED_TOAST not in new:
        return _row(relation, new)
    # The value did not change, so the old row (whole under REPLICA IDENTITY FULL, TOAST included) has it.
    row: Row = {}
    for index, (name, value) in enumerate(zip(relation.column_names, new, strict=True)):
        if value is pgoutput.UNCHANGED_TOAST:
            if old is not None and old[index] is not pgoutput.UNCHANGED_TOAST:
                row[name] = cast(str | None, old[index])
        else:
            row[name] = cast(str | None, value)
    return row
