"""The persistent registry of shapes: definitions, handles, snapshot state, and where each log lives.

Layout under the engine's data dir:

- `shapes.json`: every shape as of the last compaction, written whole and atomically (temp file, fsync,
  rename, fsync dir).
- `shapes.journal`: the changes since, one JSON line each (the records it puts and the handles it drops,
  so a rotation is one line), appended and fdatasynced. Rewriting the whole file on every change made a
  change cost O(shapes): at 1,000 shapes a new shape took ~90 ms, most of it re-encoding the other 999.
  When the journal holds more lines than COMPACT_MIN_LINES and twice the shapes, the state is written to
  shapes.json and the journal emptied; replaying a journal over a shapes.json that already holds its
  changes (a crash between the two) changes nothing, as every line is a put or a drop of a unique handle.
  A torn last line (a crash mid-append) is cut off on open; a bad line before it is damage, refused.
- `shapes/<handle>/`: one directory per shape, holding its ShapeLog.
- `registry.lock`: flock'ed while a registry is open, so two engines never share a data dir.

Handles are `<16 hex digits of the definition's SHA-256>-<creation time in µs>`. The µs part is strictly
increasing over every handle this data dir ever issued (a persisted high-water mark, bumped past a clock
that stalls or steps back), so a handle is never reused after its shape is deleted or rotated.

Crash ordering: a new shape's directory is made before the registry names it, and a deleted shape's
directory is removed after the registry forgets it; `open()` removes directories the registry does not
name, and forgets shapes whose directory is gone (their clients get a 409 and start over).

Thread-safety: every method takes an internal lock, so any thread may call any method. Lookups are
in-memory; changes block for two fsyncs, so an asyncio caller may prefer `asyncio.to_thread`.
Records are immutable; a change returns a new record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal, Self, get_args

from appliance.sync.shapelog import fsync_directory, make_directories

log = logging.getLogger(__name__)

REGISTRY_FILE: Final = "shapes.json"
JOURNAL_FILE: Final = "shapes.journal"
COMPACT_MIN_LINES: Final = 1000
SHAPES_DIR: Final = "shapes"
LOCK_FILE: Final = "registry.lock"
_FORMAT: Final = 1

ReplicaMode = Literal["default", "full"]
LogMode = Literal["full", "changes_only"]


class ShapeState(StrEnum):
    snapshotting = "snapshotting"
    ready = "ready"


class RegistryError(Exception):
    """The registry cannot be used as asked (locked by another process, unreadable file, unknown handle)."""


class UnknownShape(RegistryError, KeyError):
    """No shape has this handle (never existed, deleted or rotated)."""


@dataclass(frozen=True, slots=True)
class ShapeDefinition:
    """What a client asked for. Equal definitions share one shape; `canonical_key` is that equality.

    The HTTP layer resolves the request into these fields first (`table=items` → schema `public`, quoted
    identifiers unquoted, `params[n]` into position n-1). Normalised here: `where` is stripped and an empty
    one means none; `columns` are sorted (messages carry objects, so their order never shows) and must be
    distinct.
    """

    schema: str
    table: str
    where: str | None = None
    params: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None
    replica: ReplicaMode = "default"
    log_mode: LogMode = "full"

    def __post_init__(self) -> None:
        if not self.schema or not self.table:
            raise ValueError("a shape needs a schema and a table")
        where = self.where.strip() if self.where is not None else None
        object.__setattr__(self, "where", where or None)
        object.__setattr__(self, "params", tuple(self.params))
        if not all(isinstance(param, str) for param in self.params):
            raise ValueError("params are strings (Postgres text input)")
        if self.columns is not None:
            columns = tuple(self.columns)
            if not columns:
                raise ValueError("columns, when given, must name at least one column")
            if len(set(columns)) != len(columns):
                raise ValueError("columns must be distinct")
            object.__setattr__(self, "columns", tuple(sorted(columns)))
        if self.replica not in get_args(ReplicaMode):
            raise ValueError(f"replica must be one of {get_args(ReplicaMode)}")
        if self.log_mode not in get_args(LogMode):
            raise ValueError(f"log must be one of {get_args(LogMode)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "where": self.where,
            "params": list(self.params),
            "columns": list(self.columns) if self.columns is not None else None,
            "replica": self.replica,
            "log": self.log_mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeDefinition:
        columns = data.get("columns")
        return cls(
            schema=data["schema"],
            table=data["table"],
            where=data.get("where"),
            params=tuple(data.get("params", ())),
            columns=tuple(columns) if columns is not None else None,
            replica=data.get("replica", "default"),
            log_mode=data.get("log", "full"),
        )

    @property
    def canonical_key(self) -> str:
        """A stable text form: same definition, same key, across processes and versions of this file."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """`pg_current_snapshot()` of the snapshot transaction, as 64-bit xids (xid8)."""

    xmin: int
    xmax: int
    xip_list: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"xmin": self.xmin, "xmax": self.xmax, "xip_list": list(self.xip_list)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotInfo:
        return cls(int(data["xmin"]), int(data["xmax"]), tuple(int(x) for x in data["xip_list"]))


@dataclass(frozen=True, slots=True)
class ShapeRecord:
    """One shape as persisted. `live_from_lsn`: live changes committed after this LSN belong to the log."""

    handle: str
    definition: ShapeDefinition
    created_micros: int
    state: ShapeState = ShapeState.snapshotting
    snapshot: SnapshotInfo | None = None
    live_from_lsn: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "definition": self.definition.to_json(),
            "created_micros": self.created_micros,
            "state": self.state.value,
            "snapshot": self.snapshot.to_json() if self.snapshot is not None else None,
            "live_from_lsn": self.live_from_lsn,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShapeRecord:
        snapshot = data.get("snapshot")
        return cls(
            handle=data["handle"],
            definition=ShapeDefinition.from_json(data["definition"]),
            created_micros=int(data["created_micros"]),
            state=ShapeState(data["state"]),
            snapshot=SnapshotInfo.from_json(snapshot) if snapshot is not None else None,
            live_from_lsn=data.get("live_from_lsn"),
        )


class _Unchanged:
    """Marks a keyword of `update()` the caller did not pass (None is a real value there)."""


_UNCHANGED: Final = _Unchanged()


def _clock_micros() -> int:
    return time.time_ns() // 1000


class ShapeRegistry:
    """All shapes of one engine data dir. Open with `ShapeRegistry.open(data_dir)`."""

    def __init__(self, data_dir: Path, lock_fd: int, clock: Callable[[], int]) -> None:
        self.data_dir = data_dir
        self._lock_fd = lock_fd
        self._clock = clock
        self._lock = threading.RLock()
        self._by_handle: dict[str, ShapeRecord] = {}
        self._by_key: dict[str, str] = {}  # canonical key → handle
        self._last_handle_micros = 0
        self._closed = False
        self._journal_fd = -1
        self._journal_lines = 0

    @classmethod
    def open(cls, data_dir: Path | str, *, clock: Callable[[], int] = _clock_micros) -> ShapeRegistry:
        """Load (or start) the registry in `data_dir`; `clock` (µs since the epoch) is replaceable in tests."""
        data_dir = Path(data_dir)
        make_directories(data_dir / SHAPES_DIR)
        lock_fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RegistryError(f"{data_dir} is in use by another shape registry") from None
        registry = cls(data_dir, lock_fd, clock)
        try:
            registry._load()
        except BaseException:
            registry.close()
            raise
        return registry

    def _replay_journal(self, records: dict[str, ShapeRecord]) -> list[ShapeRecord]:
        """Apply the journal's lines over `records`; cut a torn last line; open the journal for appends."""
        path = self.data_dir / JOURNAL_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._journal_fd = fd
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        replay = _apply_journal(path, data, records)
        self._last_handle_micros = max(self._last_handle_micros, replay.last_handle_micros)
        self._journal_lines = replay.lines
        if replay.good_bytes != len(data):
            log.warning("%s: dropping a torn last line", path)
            os.ftruncate(fd, replay.good_bytes)
            os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_END)
        return list(records.values())

    def _load(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / (REGISTRY_FILE + ".tmp")).unlink()  # a write a crash interrupted
        path = self.data_dir / REGISTRY_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            data = {"format": _FORMAT, "last_handle_micros": 0, "shapes": []}
        except ValueError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from None
        if data.get("format") != _FORMAT:
            raise RegistryError(f"{path}: unknown format {data.get('format')!r}")
        try:
            records = [ShapeRecord.from_json(item) for item in data["shapes"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: bad shape entry: {exc!r}") from None
        self._last_handle_micros = int(data["last_handle_micros"])
        records = self._replay_journal({record.handle: record for record in records})

        shapes_dir = self.data_dir / SHAPES_DIR
        present = {entry.name for entry in shapes_dir.iterdir()}
        lost = [record for record in records if record.handle not in present]
        for record in lost:
            log.warning("shape %s lost its log directory; forgetting it", record.handle)
        kept = [record for record in records if record.handle in present]
        for record in kept:
            self._by_handle[record.handle] = record
            self._by_key[record.definition.canonical_key] = record.handle
        if lost:
            self._compact()
        orphans = present - self._by_handle.keys()
        for name in orphans:
            # Made for a shape whose registration never landed, or left by a delete cut short by a crash.
            log.info("removing %s: no shape owns it", shapes_dir / name)
            _remove_tree(shapes_dir / name)
        if orphans:
            fsync_directory(shapes_dir)

    # -- lookups -----------------------------------------------------------------------------------------

    def by_handle(self, handle: str) -> ShapeRecord | None:
        with self._lock:
            return self._by_handle.get(handle)

    def by_definition(self, definition: ShapeDefinition) -> ShapeRecord | None:
        with self._lock:
            handle = self._by_key.get(definition.canonical_key)
            return self._by_handle[handle] if handle is not None else None

    def shapes(self) -> list[ShapeRecord]:
        """Every shape, oldest first."""
        with self._lock:
            return sorted(self._by_handle.values(), key=lambda record: record.created_micros)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_handle)

    def log_dir(self, handle: str) -> Path:
        """Where the shape's ShapeLog lives (exists for every registered shape)."""
        with self._lock:
            if handle not in self._by_handle:
                raise UnknownShape(handle)
        return self.data_dir / SHAPES_DIR / handle

    # -- changes -----------------------------------------------------------------------------------------

    def get_or_create(self, definition: ShapeDefinition) -> tuple[ShapeRecord, bool]:
        """The shape for `definition`, created (state snapshotting, empty log dir) if none; and whether it was."""
        with self._lock:
            existing = self.by_definition(definition)
            if existing is not None:
                return existing, False
            return self._replace(None, definition), True

    def rotate(self, handle: str) -> ShapeRecord:
        """Replace a shape by a fresh one with the same definition and a new handle, in one atomic step.

        For TRUNCATE, a schema change or a snapshot cut short by a restart: clients holding the old handle
        get a 409 naming the new one. The old log directory is removed; close its ShapeLog first.
        """
        with self._lock:
            old = self._require(handle)
            return self._replace(old, old.definition)

    def update(
        self,
        handle: str,
        *,
        state: ShapeState | _Unchanged = _UNCHANGED,
        snapshot: SnapshotInfo | _Unchanged | None = _UNCHANGED,
        live_from_lsn: int | _Unchanged | None = _UNCHANGED,
    ) -> ShapeRecord:
        """Persist new snapshot facts or state of a shape; keywords not passed stay as they are."""
        with self._lock:
            record = self._require(handle)
            changes: dict[str, Any] = {}
            if not isinstance(state, _Unchanged):
                changes["state"] = ShapeState(state)
            if not isinstance(snapshot, _Unchanged):
                changes["snapshot"] = snapshot
            if not isinstance(live_from_lsn, _Unchanged):
                changes["live_from_lsn"] = live_from_lsn
            updated = dataclasses.replace(record, **changes)
            if updated == record:
                return record
            self._journal([updated], [], self._last_handle_micros)
            self._by_handle[handle] = updated
            return updated

    def mark_ready(self, handle: str, snapshot: SnapshotInfo, live_from_lsn: int) -> ShapeRecord:
        """The snapshot is complete in the log: record its xids and the LSN live changes start after."""
        return self.update(handle, state=ShapeState.ready, snapshot=snapshot, live_from_lsn=live_from_lsn)

    def delete(self, handle: str) -> ShapeRecord | None:
        """Forget a shape and remove its log directory (close its ShapeLog first); None if unknown."""
        with self._lock:
            self._check_open()
            record = self._by_handle.get(handle)
            if record is None:
                return None
            self._journal([], [handle], self._last_handle_micros)
            del self._by_handle[handle]
            del self._by_key[record.definition.canonical_key]
            self._remove_log_dir(handle)
            return record

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._journal_fd >= 0:
                    os.close(self._journal_fd)
                os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _require(self, handle: str) -> ShapeRecord:
        self._check_open()
        record = self._by_handle.get(handle)
        if record is None:
            raise UnknownShape(handle)
        return record

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the shape registry is closed")

    def _replace(self, old: ShapeRecord | None, definition: ShapeDefinition) -> ShapeRecord:
        """Register a new shape for `definition`, dropping `old` in the same atomic write."""
        self._check_open()
        micros = max(self._clock(), self._last_handle_micros + 1)
        record = ShapeRecord(f"{definition.digest}-{micros}", definition, micros)
        # The directory first: a crash before the registry names it leaves an orphan that open() removes.
        make_directories(self.data_dir / SHAPES_DIR / record.handle)
        try:
            self._journal([record], [old.handle] if old is not None else [], micros)
        except BaseException:
            _remove_tree(self.data_dir / SHAPES_DIR / record.handle)
            raise
        self._last_handle_micros = micros
        if old is not None:
            del self._by_handle[old.handle]
        self._by_handle[record.handle] = record
        self._by_key[definition.canonical_key] = record.handle
        if old is not None:
            self._remove_log_dir(old.handle)
        return record

    def _remove_log_dir(self, handle: str) -> None:
        _remove_tree(self.data_dir / SHAPES_DIR / handle)
        # Not strictly needed for correctness (open() cleans orphans) but keeps the disk space promise.
        fsync_directory(self.data_dir / SHAPES_DIR)

    def _journal(self, put: list[ShapeRecord], drop: list[str], last_handle_micros: int) -> None:
        """One change, durable when this returns: a journal line (or, when the journal is long, all shapes
        written to shapes.json and the journal emptied)."""
        entry = {"put": [record.to_json() for record in put], "drop": drop, "last_handle_micros": last_handle_micros}
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self._journal_fd, view) :]
        os.fdatasync(self._journal_fd)
        self._journal_lines += 1
        if self._journal_lines > max(COMPACT_MIN_LINES, 2 * len(self._by_handle)):
            shapes = dict(self._by_handle)
            for handle in drop:
                shapes.pop(handle, None)
            shapes.update((record.handle, record) for record in put)
            self._compact(shapes, last_handle_micros)

    def _compact(self, shapes: dict[str, ShapeRecord] | None = None, last_handle_micros: int | None = None) -> None:
        """Every shape to shapes.json, then an empty journal (in that order: see the module docstring)."""
        self._persist(self._by_handle if shapes is None else shapes,
                      self._last_handle_micros if last_handle_micros is None else last_handle_micros)
        os.ftruncate(self._journal_fd, 0)
        os.lseek(self._journal_fd, 0, os.SEEK_SET)
        os.fsync(self._journal_fd)
        self._journal_lines = 0

    def _persist(self, shapes: dict[str, ShapeRecord], last_handle_micros: int) -> None:
        ordered: Sequence[ShapeRecord] = sorted(shapes.values(), key=lambda record: record.created_micros)
        document = {
            "format": _FORMAT,
            "last_handle_micros": last_handle_micros,
            "shapes": [record.to_json() for record in ordered],
        }
        data = json.dumps(document, indent=1, ensure_ascii=False).encode() + b"\n"
        path = self.data_dir / REGISTRY_FILE
        temporary = path.with_name(REGISTRY_FILE + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        fsync_directory(self.data_dir)


@dataclass(frozen=True)
class _Replay:
    lines: int
    good_bytes: int
    last_handle_micros: int


def _apply_journal(path: Path, data: bytes, records: dict[str, ShapeRecord]) -> _Replay:
    """Apply journal `data` over `records` (in place). A crash can leave a partial line only at the end
    (each change is one line, appended in one write): an unterminated tail, or a last line that does not
    parse, is a torn write and is not counted; a bad line before it is damage (RegistryError)."""
    lines = data.split(b"\n")
    good = count = micros = 0
    for number, line in enumerate(lines[:-1]):  # the part after the last newline is empty or torn
        try:
            entry = json.loads(line)
            for item in entry["put"]:
                record = ShapeRecord.from_json(item)
                records[record.handle] = record
            for handle in entry["drop"]:
                records.pop(handle, None)
            micros = max(micros, int(entry["last_handle_micros"]))
        except (KeyError, TypeError, ValueError) as exc:
            if number == len(lines) - 2 and not lines[-1]:
                break
            raise RegistryError(f"{path}: bad line {number + 1}: {exc!r}") from None
        good += len(line) + 1
        count += 1
    return _Replay(count, good, micros)


def count_shapes(data_dir: Path | str) -> int | None:
    """Shapes in a registry, read without its lock (for status while the engine runs); None when there is
    no readable registry yet."""
    data_dir = Path(data_dir)
    records: dict[str, ShapeRecord] = {}
    try:
        snapshot = json.loads((data_dir / REGISTRY_FILE).read_bytes())
        records = {record.handle: record for record in map(ShapeRecord.from_json, snapshot["shapes"])}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        journal = (data_dir / JOURNAL_FILE).read_bytes()
    except FileNotFoundError:
        return len(records) if (data_dir / REGISTRY_FILE).exists() else None
    except OSError:
        return None
    try:
        _apply_journal(data_dir / JOURNAL_FILE, journal, records)
    except RegistryError:
        return None
    return len(records)


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
