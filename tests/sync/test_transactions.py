"""How the engine turns a transaction into log entries for the shapes it concerns (SyncEngine._process), without
Postgres: which shapes get which messages, the `last` header, replays after a restart, snapshotting shapes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from appliance.sync.catalog import ColumnMeta, TableInfo
from appliance.sync.engine import EngineConfig, ShapeRuntime, SyncEngine
from appliance.sync.registry import ShapeDefinition, ShapeRecord, ShapeState
from appliance.sync.replication import Change, ColumnInfo, RelationInfo, Transaction
from appliance.sync.shape import CompiledShape
from appliance.sync.shapelog import ShapeLog


def meta(name: str, typname: str, pk: int | None = None) -> ColumnMeta:
    return ColumnMeta(name, 23, typname, None, 0, -1, pk is not None, pk, False)


TABLE = TableInfo(
    1, "public", "items", (meta("id", "int4", 0), meta("house_id", "int4"), meta("deleted_at", "text")), ("id",)
)
RELATION = RelationInfo(
    1, "public", "items", "f", tuple(ColumnInfo(c.name, 23, c.typname, -1, True) for c in TABLE.columns), ("id",)
)
WHERE = "house_id = $1 AND deleted_at IS NULL"


def insert(id_: int, house: int, deleted: bool = False) -> Change:
    row = {"id": str(id_), "house_id": str(house), "deleted_at": "x" if deleted else None}
    return Change("insert", RELATION, new=row)


def transaction(lsn: int, *changes: Change) -> Transaction:
    return Transaction(xid=lsn // 10, commit_lsn=lsn, end_lsn=lsn + 5, commit_ts=datetime.now(UTC),
                       changes=list(changes))


def engine_with(
    tmp_path: Path, shapes: dict[str, tuple[str, ...]], ready: bool = True
) -> tuple[SyncEngine, dict[str, ShapeRuntime]]:
    """An engine holding one shape of `WHERE` per entry: name -> (house, *columns); its logs are closed when
    the test ends."""
    engine = SyncEngine(EngineConfig(dsn="", data_dir=tmp_path))
    runtimes: dict[str, ShapeRuntime] = {}
    for name, (house, *columns) in shapes.items():
        definition = ShapeDefinition("public", "items", where=WHERE, params=(house,), columns=tuple(columns) or None)
        record = ShapeRecord(name, definition, 0, ShapeState.ready if ready else ShapeState.snapshotting, None, 0)
        runtime = ShapeRuntime(record, ShapeLog.open(tmp_path / name), compiled=CompiledShape(definition, TABLE))
        if not ready:
            runtime.buffer = []
        engine._add(runtime)
        runtimes[name] = runtime
    return engine, runtimes


def process(engine: SyncEngine, *txns: Transaction) -> dict[str, list[dict]]:
    pending: dict = {}
    for txn in txns:
        asyncio.run(engine._process(txn, pending))
    return {runtime.handle: [json.loads(data) for _, _, data in entries] for runtime, entries in pending.items()}


def close(engine: SyncEngine) -> None:
    for runtime in engine.shapes():
        runtime.log.close()


def summary(entries: list[dict]) -> list[tuple[str, int, bool]]:
    return [(m["value"]["id"], m["headers"]["op_position"], m["headers"].get("last", False)) for m in entries]


def test_each_shape_gets_its_changes_and_only_its_last_one_in_a_transaction_says_so(tmp_path: Path) -> None:
    engine, _ = engine_with(tmp_path, {"h1": ("1",), "h1-narrow": ("1", "id", "house_id"), "h2": ("2",)})
    # The last change for house 1 is deleted, so not in the shapes: the one before it is their last.
    got = process(engine, transaction(1000, insert(1, 1), insert(2, 2), insert(3, 1), insert(4, 1, deleted=True)))
    assert summary(got["h1"]) == [("1", 0, False), ("3", 4, True)]
    assert summary(got["h1-narrow"]) == [("1", 0, False), ("3", 4, True)]
    assert set(got["h1-narrow"][0]["value"]) == {"id", "house_id"}
    assert summary(got["h2"]) == [("2", 2, True)]
    # A second transaction in the same batch: its own last, after the first's entries.
    got = process(engine, transaction(1000, insert(1, 1)), transaction(2000, insert(5, 1), insert(6, 1)))
    assert [(m["headers"]["lsn"], m["headers"].get("last", False)) for m in got["h1"]] == [
        ("1000", True), ("2000", False), ("2000", True)
    ]
    close(engine)


def test_a_transaction_sent_again_adds_only_what_each_log_lacks(tmp_path: Path) -> None:
    engine, runtimes = engine_with(tmp_path, {"h1": ("1",)})
    first = transaction(1000, insert(1, 1), insert(2, 1), insert(3, 1))
    pending: dict = {}
    asyncio.run(engine._process(first, pending))
    runtime = runtimes["h1"]
    runtime.log.append_keyed(pending[runtime][:2], show=True)  # a crash after the first two were written
    # Sent again (a restart or reconnect: the engine has seen it, or a later one, already).
    got = process(engine, first)
    assert summary(got["h1"]) == [("3", 4, True)]
    close(engine)


def test_a_snapshotting_shape_buffers_each_transaction_once_and_logs_nothing(tmp_path: Path) -> None:
    engine, runtimes = engine_with(tmp_path, {"h1": ("1",)}, ready=False)
    txn = transaction(1000, insert(1, 1), insert(2, 1), insert(3, 2))
    assert process(engine, txn) == {}
    assert runtimes["h1"].buffer == [txn]
    close(engine)
