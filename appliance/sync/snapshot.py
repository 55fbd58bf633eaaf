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
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from appliance.sync import messages
from appliance.sync.offsets import LogOffset
from appliance.sync.registry import SnapshotInfo
from appliance.sync.replication import TEXT_OUTPUT_SETTINGS
from appliance.sync.shape import CompiledShape
from appliance.sync.shapelog import ShapeLog

CHUNK_BYTES: Final = 1024 * 1024
FETCH_ROWS: Final = 2000


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


def snapshot_query(shape: CompiledShape) -> tuple[sql.Composed, list[object]]:
    table = sql.Identifier(shape.table.schema, shape.table.table)
    # Key columns ride along even when not selected (tables without a primary key are keyed by selected
    # columns only, so this adds nothing there).
    wanted = list(dict.fromkeys([*shape.columns, *shape.key_columns]))
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in wanted)
    query: sql.Composed = sql.SQL("SELECT {} FROM {}").format(columns, table)
    params: list[object] = []
    if shape.where is not None:
        condition, params = shape.where.to_sql()
        query = sql.SQL("{} WHERE {}").format(query, condition)
    return query, params


def take_snapshot(
    dsn: str,
    shape: CompiledShape,
    log: ShapeLog,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    cancelled: threading.Event | None = None,
) -> SnapshotInfo:
    """Write the shape's snapshot into its (empty) log and sync it; returns the snapshot's xids."""
    with connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert row is not None
            info = parse_pg_snapshot(row[0])
            chunk_number = 0
            chunk: list[bytes] = []
            size = 0
            if shape.definition.log_mode == "full":
                for column in shape.table.columns:
                    conn.adapters.register_loader(column.type_oid, TextLoader)
                query, params = snapshot_query(shape)
                names = list(dict.fromkeys([*shape.columns, *shape.key_columns]))
                selected = set(shape.columns)
                with conn.cursor(name="appliance_sync_snapshot") as cursor:
                    cursor.itersize = FETCH_ROWS
                    cursor.execute(query, params)
                    while batch := cursor.fetchmany(FETCH_ROWS):
                        if cancelled is not None and cancelled.is_set():
                            raise SnapshotCancelled
                        for values in batch:
                            record = dict(zip(names, values, strict=True))
                            message = shape.snapshot_message(
                                record if len(selected) == len(names) else {k: record[k] for k in shape.columns}
                            )
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
