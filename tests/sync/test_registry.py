"""Shape registry: shared shapes per definition, handles never reused, persistence and crash leftovers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.sync.offsets import LogOffset
from appliance.sync.registry import (
    COMPACT_MIN_LINES,
    JOURNAL_FILE,
    REGISTRY_FILE,
    SHAPES_DIR,
    RegistryError,
    ShapeDefinition,
    ShapeRegistry,
    ShapeState,
    SnapshotInfo,
    UnknownShape,
)
from appliance.sync.shapelog import ShapeLog

ITEMS = ShapeDefinition("public", "items")


class FrozenClock:
    """A clock the test moves by hand, including backwards."""

    def __init__(self, micros: int = 1_700_000_000_000_000) -> None:
        self.micros = micros

    def __call__(self) -> int:
        return self.micros


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def registry(tmp_path: Path, clock: FrozenClock) -> Iterator[ShapeRegistry]:
    opened = ShapeRegistry.open(tmp_path / "sync", clock=clock)
    yield opened
    opened.close()


# -- definitions -----------------------------------------------------------------------------------------


def test_equal_requests_share_one_shape(registry: ShapeRegistry) -> None:
    first, created = registry.get_or_create(ShapeDefinition("public", "items", where=" id > $1 ", params=("5",)))
    again, created_again = registry.get_or_create(ShapeDefinition("public", "items", where="id > $1", params=["5"]))  # type: ignore[arg-type]
    assert created and not created_again
    assert again == first
    assert len(registry) == 1


def test_column_order_does_not_make_a_different_shape() -> None:
    a = ShapeDefinition("public", "items", columns=("id", "name", "tags"))
    b = ShapeDefinition("public", "items", columns=("tags", "id", "name"))
    assert a == b and a.canonical_key == b.canonical_key and a.digest == b.digest


@pytest.mark.parametrize(
    "other",
    [
        ShapeDefinition("public", "Items"),
        ShapeDefinition("other", "items"),
        ShapeDefinition("public", "items", where="id > 1"),
        ShapeDefinition("public", "items", where="id > $1", params=("1",)),
        ShapeDefinition("public", "items", columns=("id",)),
        ShapeDefinition("public", "items", replica="full"),
        ShapeDefinition("public", "items", log_mode="changes_only"),
    ],
)
def test_any_difference_in_the_definition_makes_another_shape(registry: ShapeRegistry, other: ShapeDefinition) -> None:
    items, _ = registry.get_or_create(ITEMS)
    shape, created = registry.get_or_create(other)
    assert created and shape.handle != items.handle
    assert other.canonical_key != ITEMS.canonical_key
    assert registry.by_definition(other) == shape and registry.by_definition(ITEMS) == items


def test_the_canonical_key_is_stable_text() -> None:
    definition = ShapeDefinition("public", "items", where="name = $1", params=("é",), columns=("name", "id"))
    assert definition.canonical_key == (
        '{"columns":["id","name"],"log":"full","params":["é"],"replica":"default",'
        '"schema":"public","table":"items","where":"name = $1"}'
    )
    assert ShapeDefinition("public", "items", where="   ").where is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"schema": "", "table": "items"},
        {"schema": "public", "table": ""},
        {"schema": "public", "table": "items", "columns": ()},
        {"schema": "public", "table": "items", "columns": ("id", "id")},
        {"schema": "public", "table": "items", "replica": "partial"},
        {"schema": "public", "table": "items", "log_mode": "changes"},
        {"schema": "public", "table": "items", "params": (1,)},
    ],
)
def test_invalid_definitions_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ShapeDefinition(**kwargs)  # type: ignore[arg-type]


# -- handles ---------------------------------------------------------------------------------------------


def test_a_handle_is_the_definition_digest_and_creation_micros(registry: ShapeRegistry, clock: FrozenClock) -> None:
    shape, _ = registry.get_or_create(ITEMS)
    assert shape.handle == f"{ITEMS.digest}-{clock.micros}"
    assert shape.created_micros == clock.micros
    assert registry.by_handle(shape.handle) == shape
    assert registry.by_handle("nope-1") is None


def test_handles_are_never_reused_after_delete_and_recreate_even_when_the_clock_stalls(
    registry: ShapeRegistry, clock: FrozenClock
) -> None:
    seen = set()
    for _ in range(5):
        shape, created = registry.get_or_create(ITEMS)
        assert created and shape.handle not in seen
        seen.add(shape.handle)
        registry.delete(shape.handle)
    clock.micros -= 10_000_000  # NTP stepped the clock back
    shape, _ = registry.get_or_create(ITEMS)
    assert shape.handle not in seen


def test_handles_are_never_reused_across_a_restart_with_the_clock_back(tmp_path: Path, clock: FrozenClock) -> None:
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        first, _ = registry.get_or_create(ITEMS)
        registry.delete(first.handle)
    clock.micros -= 1
    with ShapeRegistry.open(tmp_path, clock=clock) as reopened:
        again, created = reopened.get_or_create(ITEMS)
        assert created and again.handle != first.handle
        assert again.created_micros > first.created_micros


def test_rotation_gives_a_new_handle_and_an_empty_log(registry: ShapeRegistry) -> None:
    old, _ = registry.get_or_create(ITEMS)
    with ShapeLog.open(registry.log_dir(old.handle)) as shape_log:
        shape_log.append([(LogOffset.snapshot_chunk(0), b"{}")])
    old_dir = registry.log_dir(old.handle)
    registry.mark_ready(old.handle, SnapshotInfo(10, 12, (11,)), 1234)
    new = registry.rotate(old.handle)
    assert new.handle != old.handle and new.definition == old.definition
    assert new.state is ShapeState.snapshotting and new.snapshot is None
    assert registry.by_handle(old.handle) is None
    assert registry.by_definition(ITEMS) == new
    assert not old_dir.exists()
    assert registry.log_dir(new.handle).is_dir()
    assert list(registry.log_dir(new.handle).iterdir()) == []
    with pytest.raises(UnknownShape):
        registry.rotate(old.handle)


# -- persistence -----------------------------------------------------------------------------------------


def test_shapes_and_their_state_survive_a_restart(tmp_path: Path, clock: FrozenClock) -> None:
    data_dir = tmp_path / "sync"
    with ShapeRegistry.open(data_dir, clock=clock) as registry:
        items, _ = registry.get_or_create(ITEMS)
        clock.micros += 5
        filtered, _ = registry.get_or_create(
            ShapeDefinition(
                "app",
                "orders",
                where="owner = $1",
                params=("u1",),
                columns=("id", "owner"),
                replica="full",
                log_mode="changes_only",
            )
        )
        registry.update(filtered.handle, snapshot=SnapshotInfo(100, 105, (101, 103)), live_from_lsn=None)
        ready = registry.mark_ready(items.handle, SnapshotInfo(7, 9, ()), live_from_lsn=2**40)
        filtered = registry.by_handle(filtered.handle)  # type: ignore[assignment]
    with ShapeRegistry.open(data_dir, clock=clock) as reopened:
        assert reopened.shapes() == [ready, filtered]
        assert reopened.by_handle(items.handle) == ready
        assert ready.state is ShapeState.ready and ready.live_from_lsn == 2**40
        assert reopened.by_definition(filtered.definition) == filtered
        assert filtered.snapshot == SnapshotInfo(100, 105, (101, 103))
        assert filtered.state is ShapeState.snapshotting
        assert reopened.log_dir(items.handle).is_dir()


def test_update_keeps_what_is_not_passed_and_refuses_unknown_handles(registry: ShapeRegistry) -> None:
    shape, _ = registry.get_or_create(ITEMS)
    with_snapshot = registry.update(shape.handle, snapshot=SnapshotInfo(1, 2))
    assert registry.update(shape.handle, live_from_lsn=99).snapshot == with_snapshot.snapshot
    assert registry.update(shape.handle, state=ShapeState.ready).live_from_lsn == 99
    with pytest.raises(UnknownShape):
        registry.update("missing-1", state=ShapeState.ready)


def test_deletion_removes_the_log_directory_and_survives_a_restart(tmp_path: Path, clock: FrozenClock) -> None:
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        shape, _ = registry.get_or_create(ITEMS)
        directory = registry.log_dir(shape.handle)
        with ShapeLog.open(directory) as shape_log:
            shape_log.append([(LogOffset.snapshot_chunk(0), b"{}")])
        assert registry.delete(shape.handle) == shape
        assert registry.delete(shape.handle) is None
        assert not directory.exists()
        assert registry.by_definition(ITEMS) is None
        with pytest.raises(UnknownShape):
            registry.log_dir(shape.handle)
    with ShapeRegistry.open(tmp_path, clock=clock) as reopened:
        assert len(reopened) == 0


def test_a_change_is_one_journal_line_and_a_long_journal_is_compacted(tmp_path: Path, clock: FrozenClock) -> None:
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        registry.get_or_create(ITEMS)
        files = sorted(p.name for p in registry.data_dir.iterdir())
        assert files == sorted([JOURNAL_FILE, SHAPES_DIR, "registry.lock"])
        assert len((tmp_path / JOURNAL_FILE).read_bytes().splitlines()) == 1
        # More changes than the compaction threshold (and than twice the shapes): the state moves to
        # shapes.json in one piece and the journal starts over.
        handle = registry.shapes()[0].handle
        for n in range(COMPACT_MIN_LINES + 5):
            registry.update(handle, live_from_lsn=n + 1)
        expected = registry.shapes()
    document = json.loads((tmp_path / REGISTRY_FILE).read_text())
    assert document["format"] == 1 and len(document["shapes"]) == 1
    assert len((tmp_path / JOURNAL_FILE).read_bytes().splitlines()) < 10
    assert not (tmp_path / (REGISTRY_FILE + ".tmp")).exists()
    with ShapeRegistry.open(tmp_path, clock=clock) as reopened:
        assert reopened.shapes() == expected


def test_a_torn_last_journal_line_is_cut_and_a_bad_middle_line_refused(tmp_path: Path, clock: FrozenClock) -> None:
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        first, _ = registry.get_or_create(ITEMS)
        clock.micros += 1
        registry.get_or_create(ShapeDefinition("public", "other"))
    journal = tmp_path / JOURNAL_FILE
    whole = journal.read_bytes()
    lines = whole.splitlines(keepends=True)
    journal.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the append
    (tmp_path / SHAPES_DIR / lines[1].decode().split('"handle":"')[1].split('"')[0]).rmdir()
    with ShapeRegistry.open(tmp_path, clock=clock) as reopened:
        assert reopened.shapes() == [first]
    assert journal.read_bytes() == lines[0]  # cut where the torn line began
    journal.write_bytes(b"{not json}\n" + lines[0])
    with pytest.raises(RegistryError, match="bad line 1"):
        ShapeRegistry.open(tmp_path, clock=clock)


def test_leftovers_of_a_crash_are_cleaned_on_open(tmp_path: Path, clock: FrozenClock) -> None:
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        kept, _ = registry.get_or_create(ITEMS)
        clock.micros += 1
        lost, _ = registry.get_or_create(ShapeDefinition("public", "other"))
    # A directory made for a shape whose registration never landed, a half-written temp file, and a shape
    # whose directory vanished.
    orphan = tmp_path / SHAPES_DIR / "deadbeef-1"
    (orphan / "nested").mkdir(parents=True)
    (orphan / "log").write_bytes(b"x")
    (tmp_path / (REGISTRY_FILE + ".tmp")).write_text("{")
    (tmp_path / SHAPES_DIR / lost.handle).rmdir()
    with ShapeRegistry.open(tmp_path, clock=clock) as reopened:
        assert reopened.shapes() == [kept]
        assert not orphan.exists()
        assert not (tmp_path / (REGISTRY_FILE + ".tmp")).exists()
    with ShapeRegistry.open(tmp_path, clock=clock) as again:
        assert again.shapes() == [kept]


def test_a_data_dir_has_one_registry_at_a_time(registry: ShapeRegistry) -> None:
    with pytest.raises(RegistryError, match="in use"):
        ShapeRegistry.open(registry.data_dir)


def test_an_unreadable_registry_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / REGISTRY_FILE).write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        ShapeRegistry.open(tmp_path)
    (tmp_path / REGISTRY_FILE).write_text('{"format": 99}')
    with pytest.raises(RegistryError, match="unknown format"):
        ShapeRegistry.open(tmp_path)
    # A failed open releases the lock, so a fixed file can be opened.
    os.unlink(tmp_path / REGISTRY_FILE)
    ShapeRegistry.open(tmp_path).close()


def test_status_counts_shapes_from_the_journal_while_the_registry_is_open(tmp_path: Path, clock: FrozenClock) -> None:
    from appliance.sync.registry import count_shapes

    assert count_shapes(tmp_path) is None  # no registry yet
    with ShapeRegistry.open(tmp_path, clock=clock) as registry:
        first, _ = registry.get_or_create(ITEMS)
        clock.micros += 1
        registry.get_or_create(ShapeDefinition("public", "other"))
        assert count_shapes(tmp_path) == 2  # journal only, read without the registry's lock
        registry.delete(first.handle)
        assert count_shapes(tmp_path) == 1
        for n in range(COMPACT_MIN_LINES + 5):
            registry.update(registry.shapes()[0].handle, live_from_lsn=n + 1)
        assert count_shapes(tmp_path) == 1  # compacted into shapes.json
