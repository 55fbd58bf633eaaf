"""A shape's initial snapshot: its rows, read in one REPEATABLE READ READ ONLY transaction, into its log.

    info = take_snapshot(dsn, shape, log)   # blocking: run it in a worker thread

The transaction's first statement reads `pg_current_snapshot()`, which (in REPEATABLE READ) is the snapshot
every later statement of the transaction sees; its xmin/xmax/xip_list tell the engine which replicated
transactions the rows already contain, and are sent to clients in the closing `snapshot-end` message.

Rows are fetched through a server-side cursor a batch at a time and written to the log in chunks of about
`chunk_bytes` (`0_0`, `0_1`, …), each chunk one log entry synced before the next is read, so clients can
read the first chunks while later ones are still being queried, and memory never holds more than a chunk
and a batch whatever the table size. The last chunk ends with `snapshot-end`; a shape with
`log=changes_only` has no rows, only that message.

Values are the columns' text output under the session settings Electric uses (TEXT_OUTPUT_SETTINGS): every
column is loaded as raw text, so the client sees exactly what Postgres prints, as for replicated rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from appliance.sync import messages
from appliance.sync.defaults import CHUNK_BYTES
from appliance.sync.lsn import parse_lsn
from appliance.sync.offsets import LogOffset
from appliance.sync.registry import SnapshotInfo
from appliance.sync.replication import TEXT_OUTPUT_SETTINGS
from appliance.sync.shape import CompiledShape
from appliance.sync.shapelog import ShapeLog
from appliance.sync.subset import BoundSubset

FETCH_ROWS: Final = 2000
# A kept connection idle longer than this is checked (one round trip) before it is handed out: the server may
# have closed it meanwhile (a restart), and a snapshot or catalog read that fails on it fails its client.
CHECK_IDLE_AFTER_S: Final = 1.0


class SnapshotCancelled(Exception):
    """The shape went away while its snapshot was being taken."""


def session_options() -> str:
    return " ".join(f"-c {name}={value}" for name, value in TEXT_OUTPUT_SETTINGS.items())


def connect(dsn: str, **extra: Any) -> psycopg.Connection[Any]:
    """A connection whose text output is exactly what the replication stream produces."""
    return psycopg.connect(dsn, options=session_options(), connect_timeout=10, **extra)


def parse_pg_snapshot(text: str) -> SnapshotInfo:
    """`pg_current_snapshot()` text ('xmin:xmax:xip,xip') → SnapshotInfo."""
    xmin, xmax, xip = text.split(":")
    return SnapshotInfo(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))


def snapshot_query(shape: CompiledShape, subset: BoundSubset | None = None) -> tuple[sql.Composed, list[object]]:
    """The shape's rows (narrowed to `subset`'s, in its order, when given) and the placeholder values."""
    table = sql.Identifier(shape.table.schema, shape.table.table)
    # Key columns ride along even when not selected (tables without a primary key are keyed by selected
    # columns only, so this adds nothing there).
    wanted = list(dict.fromkeys([*shape.columns, *shape.key_columns]))
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in wanted)
    query: sql.Composed = sql.SQL("SELECT {} FROM {}").format(columns, table)
    params: list[object] = []
    condition: sql.Composable | None = None
    if shape.where is not None:
        condition, params = shape.where.to_sql()
        query = sql.SQL("{} WHERE {}").format(query, condition)
    if subset is not None:
        tail, subset_params = subset.sql_tail(condition)
        query = sql.SQL("{}{}").format(query, tail)
        params = [*params, *subset_params]
    return query, params


def _rows(conn: psycopg.Connection[Any], shape: CompiledShape, query: sql.Composed, params: list[object],
          cancelled: threading.Event | None = None) -> Iterator[dict[str, str | None]]:
    """The query's rows as the shape's records (selected columns only), fetched a batch at a time through a
    server-side cursor, every column as Postgres's text output."""
    names = list(dict.fromkeys([*shape.columns, *shape.key_columns]))
    selected = set(shape.columns)
    with conn.cursor(name="appliance_sync_snapshot") as cursor:
        # On the cursor, not the connection: a kept connection serves catalog reads later, which need bools
        # and numbers as such.
        for column in shape.table.columns:
            cursor.adapters.register_loader(column.type_oid, TextLoader)
        cursor.itersize = FETCH_ROWS
        cursor.execute(query, params)
        while batch := cursor.fetchmany(FETCH_ROWS):
            if cancelled is not None and cancelled.is_set():
                raise SnapshotCancelled
            for values in batch:
                record = dict(zip(names, values, strict=True))
                yield record if len(selected) == len(names) else {k: record[k] for k in shape.columns}


class ConnectionPool:
    """Idle connections kept for reuse (thread-safe: snapshots and catalog reads run in worker threads).

    A subset is one short query, and creating a shape two (its table from the catalog, its snapshot):
    opening a connection (TCP, SCRAM authentication, backend start) cost several times any of them. At most
    `size` connections are kept; one that is not cleanly idle after use is closed instead of kept."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []  # with when each was given back
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> psycopg.Connection[Any]:
        while True:
            with self._lock:
                kept = self._idle.pop() if self._idle else None
            if kept is None:
                return connect(self.dsn)
            conn, since = kept
            if conn.closed:
                continue
            if time.monotonic() - since < CHECK_IDLE_AFTER_S:
                return conn
            try:
                conn.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg.Error:
                conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.closed
        with self._lock:
            if idle and not self._closed and len(self._idle) < self.size:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def discard_idle(self) -> None:
        """Close every kept connection (after one turned out dead, the others likely are too)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.discard_idle()


@contextmanager
def _snapshot_transaction(
    source: str | ConnectionPool,
) -> Iterator[tuple[psycopg.Connection[Any], SnapshotInfo, int]]:
    """A REPEATABLE READ READ ONLY transaction and the snapshot (xids, WAL position) all its statements see:
    its first statement reads them, and in REPEATABLE READ the first statement fixes the snapshot."""
    with source.connection() if isinstance(source, ConnectionPool) else connect(source) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            row = conn.execute("SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            yield conn, parse_pg_snapshot(row[0]), parse_lsn(row[1])


@dataclass(frozen=True)
class SubsetResult:
    metadata: dict[str, Any]
    data: list[bytes]


def take_subset(pool: ConnectionPool, shape: CompiledShape, subset: BoundSubset, mark: int) -> SubsetResult:
    """The subset's rows from one REPEATABLE READ READ ONLY snapshot, each tagged with `mark`, and that
    snapshot's xids and WAL position, which let the client drop the live changes the rows already hold
    (as in Electric's SnapshotQuery)."""
    with _snapshot_transaction(pool) as (conn, info, lsn):
        query, params = snapshot_query(shape, subset)
        data = [shape.snapshot_message(record, snapshot_mark=mark) for record in _rows(conn, shape, query, params)]
    metadata = {
        **messages.snapshot_xids(info.xmin, info.xmax, info.xip_list),
        "database_lsn": str(lsn),
        "snapshot_mark": mark,
    }
    return SubsetResult(metadata, data)


def take_snapshot(
    source: str | ConnectionPool,
    shape: CompiledShape,
    log: ShapeLog,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    cancelled: threading.Event | None = None,
) -> SnapshotInfo:
    """Write the shape's snapshot into its (empty) log and sync it; returns the snapshot's xids."""
    with _snapshot_transaction(source) as (conn, info, _lsn):
        chunk_number = 0
        chunk: list[bytes] = []
        size = 0
        if shape.definition.log_mode == "full":
            query, params = snapshot_query(shape)
            for record in _rows(conn, shape, query, params, cancelled):
                message = shape.snapshot_message(record)
                chunk.append(message)
                size += len(message) + 1
                if size >= chunk_bytes:
                    log.append([(LogOffset.snapshot_chunk(chunk_number), b",".join(chunk))])
                    log.sync()
                    chunk_number += 1
                    chunk, size = [], 0
        if cancelled is not None and cancelled.is_set():
            raise SnapshotCancelled
        chunk.append(messages.encode(messages.snapshot_end(info.xmin, info.xmax, info.xip_list)))
        log.append([(LogOffset.snapshot_chunk(chunk_number), b",".join(chunk))])
        log.sync()
    return info
