"""The append-only, crash-safe log of one shape: (LogOffset, message bytes) entries in offset order.

On disk, a shape's directory holds two files:

- `log`: an 8-byte magic, then records `length u32 | crc32 u32 | tx u64 | op u64 | payload`, little-endian.
  The CRC covers length, tx, op and payload, so a torn or zero-filled tail left by a crash fails to verify.
- `durable`: the byte length of the log known to be fsynced, rewritten after a sync (at most every
  WATERMARK_INTERVAL_S, and at close: with thousands of shapes a write per log per sync round cost more
  than the sync itself) but never fsynced itself. It can only lag the truth (it is written after the
  log's fsync returns), so on open a bad record *before* that mark is real damage to synced data
  (ShapeLogCorrupt), while a bad record after it is a torn tail from a crash, truncated silently (damage
  within the last WATERMARK_INTERVAL_S of synced data is taken for a torn tail: a crash cannot cause it,
  only a disk that corrupts data it had acknowledged).

Payloads are the JSON bytes exactly as served; the HTTP layer joins a read's messages with commas inside
`[...]`. One entry may hold several comma-joined messages that must travel together (e.g. a whole snapshot
chunk at `0_<k>`): the log never splits an entry.

Offsets must strictly increase. A read's `last_offset` is always the offset of an entry, so the offsets a
client can legitimately send back are `-1` and offsets of entries; `contains()` answers exactly that.

Threading model (single writer, many readers):

- `append()`, `flush()`, `sync()` and `close()` may be called from any thread; they serialise on internal
  locks, but the design assumes one logical writer (the replication engine) deciding the order of entries.
  `append()` only touches memory unless the buffer passes FLUSH_BUFFER_BYTES (then one pwrite, no fsync);
  `flush()` shows what was appended to readers, from memory: no I/O, so the engine flushes every log a
  batch touched on its own thread (`append_keyed(..., show=True)` does both at once);
  `sync()` writes what is in memory and blocks on fdatasync, so from asyncio run it in a worker
  (`await asyncio.to_thread(log.sync)`); `sync_logs()` does that for many logs with one syncfs. Appends and
  flushes go on while another thread is inside `sync()`: only syncs wait for each other.
  Visible is not durable: a crash (of the process or the machine) loses what was shown but not synced, so
  whoever feeds the log must be able to feed it again (the engine confirms to Postgres only what is synced).
- `read()` and `contains()` are safe from any number of threads at once (positional reads on a shared fd,
  and the flushed bytes not yet in the file, which are never changed); they see what was flushed or synced,
  never what is only appended. They do blocking file reads of bounded size (≈ max_bytes + 64 KiB); from an
  event loop that is usually fine for page-cached data, or use `asyncio.to_thread` for large reads.
- `wait_for_data()` is a coroutine for long-poll handlers, woken from whichever thread flushed or synced;
  `add_listener()` registers a plain callback run in the flushing or syncing thread.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple, NoReturn, Self

from appliance.sync.offsets import BEFORE_ALL, INF_OP, LogOffset

log = logging.getLogger(__name__)

LOG_FILE: Final = "log"
WATERMARK_FILE: Final = "durable"

_FILE_MAGIC: Final = b"ESHLOG01"
HEADER_SIZE: Final = len(_FILE_MAGIC)
_RECORD: Final = struct.Struct("<IIQQ")  # length, crc32, tx, op
_RECORD_SIZE: Final = _RECORD.size
_CRC_PREFIX: Final = struct.Struct("<IQQ")  # the header fields the CRC covers (all but the CRC itself)
_LENGTH_CRC: Final = struct.Struct("<II")  # a record header is this, then the last 16 bytes of _CRC_PREFIX
_WATERMARK_MAGIC: Final = b"ESHDUR01"
_WATERMARK: Final = struct.Struct("<8sQI")  # magic, durable end, crc32 of the first two

# A bound on one entry so a corrupted length field cannot make recovery or a read allocate gigabytes.
MAX_ENTRY_BYTES: Final = 256 * 1024 * 1024
# One sparse-index point per this many log bytes: a read starts at most this far before its target, and
# memory is ~100 bytes per point (a 1 GiB log costs ~1.6 MB of index).
INDEX_EVERY_BYTES: Final = 64 * 1024
# After the last of those points, one per this many bytes, so a long poll reading "what came after my offset"
# near the end scans at most this much of older records. At most INDEX_EVERY_BYTES / FINE_INDEX_EVERY_BYTES
# of them per log, whatever its records: an index of every record among the newest 1,024 cost up to ~270 KB
# per log, which an engine holding 10,000 shapes could not afford.
FINE_INDEX_EVERY_BYTES: Final = 4 * 1024
# Unit of positional reads; with max_bytes it bounds a read's memory.
READ_CHUNK_BYTES: Final = 64 * 1024
# The durable mark lags the log by at most this long (it may only lag; see the module docstring).
# Each rewrite is an open, a write and a close, and a round that touches thousands of logs does them all: with
# 3,000 shapes under load, 0.2 s cost about 6 % of the engine's samples (py-spy), and 2 s took its CPU per change
# from 421 to 375 µs (measured with a profiling script, not a committed benchmark).
WATERMARK_INTERVAL_S: Final = 2.0
# Appends past this much unsynced data go to the file (no fsync) so a big snapshot never sits in memory.
FLUSH_BUFFER_BYTES: Final = 1024 * 1024
DEFAULT_READ_BYTES: Final = 10 * 1024 * 1024


class ShapeLogError(Exception):
    """Base class of shape log failures."""


class ShapeLogCorrupt(ShapeLogError):
    """Synced data cannot be read back (bad CRC or framing before the durable mark)."""


class ShapeLogClosed(ShapeLogError):
    """The log was closed (e.g. its shape was deleted)."""


class ShapeLogFailed(ShapeLogError):
    """A write or fsync failed; what reached the disk is unknown, so the log refuses writes until reopened."""


class LogRead(NamedTuple):
    """What `read()` returns: messages in order, and the offset of the last one (or `after` if none)."""

    messages: list[bytes]
    last_offset: LogOffset


class _BadRecord(Exception):
    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"bad record at byte {position}: {reason}")
        self.position = position
        self.reason = reason


@dataclass(eq=False)
class _Waiter:
    after: LogOffset
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


def fsync_directory(path: Path) -> None:
    """Make a directory's entries (new, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: Path) -> None:
    """mkdir -p that also fsyncs the parent of every directory it creates, so they survive a power loss."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent creator is as good as us
            directory.mkdir(mode=0o700)
        fsync_directory(directory.parent)


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _record_crc(length: int, tx: int, op: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, tx, op)))


class _Bytes(NamedTuple):
    """Where a reader takes a log's bytes from: the file below `file_end`, then `memory` (records flushed but
    not yet written to the file), which continues the file without a gap."""

    fd: int
    file_end: int
    memory: tuple[bytes | bytearray, ...] = ()

    def pread(self, length: int, position: int) -> bytes:
        if not self.memory or position + length <= self.file_end:
            return os.pread(self.fd, length, position)
        parts: list[bytes | bytearray] = []
        if position < self.file_end:
            parts.append(os.pread(self.fd, self.file_end - position, position))
            length -= self.file_end - position
            position = self.file_end
        skip = position - self.file_end
        for chunk in self.memory:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            piece = chunk[skip : skip + length]
            parts.append(piece)
            length -= len(piece)
            skip = 0
            if length <= 0:
                break
        return b"".join(parts)


def _iter_records(source: _Bytes, start: int, end: int) -> Iterator[tuple[int, int, int, memoryview]]:
    """Yield (position, tx, op, payload) for each record in [start, end); raise _BadRecord on bad framing.

    Reads READ_CHUNK_BYTES at a time (more only for a single larger record), so memory stays bounded
    whatever the log size. The payload view is only valid until the next iteration.
    """
    position = start
    chunk = b""
    chunk_start = start
    while position < end:
        rel = position - chunk_start
        if rel + _RECORD_SIZE > len(chunk):
            chunk = source.pread(min(READ_CHUNK_BYTES, end - position), position)
            chunk_start, rel = position, 0
            if len(chunk) < _RECORD_SIZE:
                raise _BadRecord(position, "truncated header")
        length, crc, tx, op = _RECORD.unpack_from(chunk, rel)
        total = _RECORD_SIZE + length
        if length > MAX_ENTRY_BYTES or position + total > end:
            raise _BadRecord(position, "record runs past the end")
        if rel + total > len(chunk):
            chunk = source.pread(max(total, min(READ_CHUNK_BYTES, end - position)), position)
            chunk_start, rel = position, 0
            if len(chunk) < total:
                raise _BadRecord(position, "short read")
        payload = memoryview(chunk)[rel + _RECORD_SIZE : rel + total]
        if _record_crc(length, tx, op, payload) != crc:
            raise _BadRecord(position, "checksum mismatch")
        yield position, tx, op, payload
        position += total


_Key = tuple[int, int]  # a LogOffset as (tx, op): what the log keeps, making a LogOffset only when asked


class _View(NamedTuple):
    """What readers may see, replaced whole by each publication (one store, no lock for the writer unless
    index points or waiters come with it): the visible end and last key, and where the bytes are: the file,
    then from `memory_start` on the chunks of `memory` (flushed, not yet written)."""

    end: int
    key: _Key
    memory_start: int
    memory: tuple[bytes | bytearray, ...] = ()


class _PendingSync(NamedTuple):
    end: int
    last: _Key


class _Published(NamedTuple):
    last: LogOffset
    woken: list[_Waiter]
    listeners: list[Callable[[LogOffset], None]]


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    """syncfs(2): write out and wait for every dirty page and inode of fd's filesystem (errors since 5.8)."""
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def flush_logs(logs: list[ShapeLog]) -> list[BaseException | None]:
    """`flush()` each log; the result is what each one raised (None when it is visible)."""
    results: list[BaseException | None] = []
    for shape_log in logs:
        try:
            shape_log.flush()
        except Exception as exc:
            results.append(exc)
        else:
            results.append(None)
    return results


def sync_logs(logs: list[ShapeLog]) -> list[BaseException | None]:
    """Sync several logs with one syncfs per filesystem rather than an fdatasync each; the result is what
    each log's own sync() would have raised (None when it is durable).

    A transaction that changes rows of many houses touches many shapes, and an fdatasync costs a journal
    commit each: with 10,000 shapes one batch could need hundreds. One syncfs makes all of them durable at
    once (and whatever else is dirty on that filesystem, which is why few logs still take fdatasync each).
    Every log's sync lock is held throughout, in one global order, so a concurrent sync() of one of them
    cannot publish a newer durable mark that this one would then move back."""
    ordered = sorted(logs, key=id)
    results: dict[int, BaseException | None] = {}
    for shape_log in ordered:
        shape_log._sync_lock.acquire()
    try:
        pending: dict[int, tuple[ShapeLog, _PendingSync]] = {}
        for shape_log in ordered:
            try:
                prepared = shape_log._prepare_sync_locked()
            except BaseException as exc:
                results[id(shape_log)] = exc
                continue
            results[id(shape_log)] = None
            if prepared is not None:
                pending[id(shape_log)] = (shape_log, prepared)
        by_device: dict[int, list[tuple[ShapeLog, _PendingSync]]] = {}
        for shape_log, prepared in pending.values():
            by_device.setdefault(shape_log._device, []).append((shape_log, prepared))
        for group in by_device.values():
            try:
                _syncfs(group[0][0]._fd)
            except OSError as exc:
                for shape_log, _prepared in group:
                    try:
                        shape_log._sync_failed(exc, "syncfs")
                    except ShapeLogFailed as failed:
                        results[id(shape_log)] = failed
                continue
            now = time.monotonic()
            for shape_log, prepared in group:
                shape_log._complete_sync_locked(prepared, now)
    finally:
        for shape_log in reversed(ordered):
            shape_log._sync_lock.release()
    return [results[id(shape_log)] for shape_log in logs]


class ShapeLog:
    """One shape's log. Open with `ShapeLog.open(directory)`; see the module docstring for the rules."""

    # An engine holds thousands of logs and touches hundreds of them per transaction: slots keep each one
    # small and in one piece of memory.
    __slots__ = (
        "_active_reads",
        "_append_lock",
        "_buffer",
        "_buffer_start",
        "_closed",
        "_device",
        "_failure",
        "_fd",
        "_file_end",
        "_fine_keys",
        "_fine_positions",
        "_index_keys",
        "_index_positions",
        "_last_fine_position",
        "_last_index_position",
        "_last_key",
        "_listeners",
        "_pending_fine",
        "_pending_index",
        "_reads_done",
        "_state",
        "_sync_lock",
        "_synced_end",
        "_synced_key",
        "_unwritten",
        "_view",
        "_waiters",
        "_watermark_written_at",
        "directory",
    )

    def __init__(
        self,
        directory: Path,
        log_fd: int,
        end: int,
        last_offset: LogOffset,
        index_keys: list[tuple[int, int]],
        index_positions: list[int],
        fine_keys: list[tuple[int, int]] | None = None,
        fine_positions: list[int] | None = None,
    ) -> None:
        self.directory = directory
        self._fd = log_fd
        self._watermark_written_at = 0.0
        self._device = os.fstat(log_fd).st_dev  # the filesystem, for sync_logs' one syncfs per filesystem

        # Published state, what readers may see: guarded by _state.
        self._state = threading.Lock()
        self._view = _View(end, (last_offset.tx, last_offset.op), end)
        # Durable state (what the last fsync covered): guarded by _sync_lock; it lags or equals the visible state.
        self._synced_end = end
        self._synced_key = (last_offset.tx, last_offset.op)
        self._index_keys = index_keys  # (tx, op) of the first record at or after each index point
        self._index_positions = index_positions
        # The fine index: points from the last sparse-index point on (that point included, when there is one).
        self._fine_keys = fine_keys if fine_keys is not None else []
        self._fine_positions = fine_positions if fine_positions is not None else []
        # Made when first needed, as are the pending index points below: most shapes have nobody waiting.
        self._waiters: set[_Waiter] | None = None
        self._listeners: list[Callable[[LogOffset], None]] | None = None
        self._active_reads = 0
        self._reads_done: threading.Event | None = None  # set by the last read to end, for close() to wait on
        self._closed = False

        # Writer state: guarded by _append_lock. The log is the file's bytes up to _file_end (written, maybe not
        # synced), then _unwritten (flushed: visible from memory, not yet in the file), then _buffer (appended:
        # not yet visible), which starts at _buffer_start.
        self._append_lock = threading.Lock()
        self._file_end = end
        self._unwritten: tuple[bytes | bytearray, ...] = ()
        self._buffer = bytearray()
        self._buffer_start = end
        self._last_key = (last_offset.tx, last_offset.op)
        self._last_index_position = index_positions[-1] if index_positions else HEADER_SIZE
        self._last_fine_position = self._fine_positions[-1] if self._fine_positions else self._last_index_position
        self._pending_index: list[tuple[tuple[int, int], int]] | None = None
        self._pending_fine: list[tuple[tuple[int, int], int]] | None = None
        self._failure: BaseException | None = None

        # One sync at a time, so the durable state only advances. Never taken by flush(): a flush does not wait
        # for a sync of the same log that is waiting for the disk.
        self._sync_lock = threading.Lock()

    # -- opening and recovery ----------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str) -> ShapeLog:
        """Open (creating if needed) the log in `directory`, truncating a torn tail left by a crash.

        Raises ShapeLogCorrupt if data before the durable mark is unreadable, and ShapeLogError if another
        ShapeLog (in this or another process) has the log open.
        """
        directory = Path(directory)
        make_directories(directory)
        log_path = directory / LOG_FILE
        created = False
        try:
            fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(log_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ShapeLogError(f"{log_path} is already open by another writer") from None
            cls._ensure_header(fd, log_path)
            watermark_fd, watermark_created = cls._open_watermark(directory)
            if created or watermark_created:
                fsync_directory(directory)
            try:
                return cls._recover(directory, fd, watermark_fd)
            finally:
                # Not kept open: one descriptor per shape, not two (an engine holds thousands of shapes,
                # and the mark is rewritten at most every WATERMARK_INTERVAL_S).
                os.close(watermark_fd)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _ensure_header(fd: int, log_path: Path) -> None:
        head = os.pread(fd, HEADER_SIZE, 0)
        if head == _FILE_MAGIC:
            return
        if len(head) < HEADER_SIZE and _FILE_MAGIC.startswith(head):
            # A crash between creating the file and syncing its header: nothing was ever appended.
            os.ftruncate(fd, 0)
            _pwrite_all(fd, _FILE_MAGIC, 0)
            os.fdatasync(fd)
            return
        raise ShapeLogCorrupt(f"{log_path} is not a shape log (bad magic)")

    @staticmethod
    def _open_watermark(directory: Path) -> tuple[int, bool]:
        path = directory / WATERMARK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
        # Full-size from the start, so later updates overwrite in place and never change the file size.
        _pwrite_all(fd, _encode_watermark(HEADER_SIZE), 0)
        os.fdatasync(fd)
        return fd, True

    @classmethod
    def _recover(cls, directory: Path, fd: int, watermark_fd: int) -> ShapeLog:
        file_size = os.fstat(fd).st_size
        durable_mark = _decode_watermark(os.pread(watermark_fd, _WATERMARK.size, 0))
        index_keys: list[tuple[int, int]] = []
        index_positions: list[int] = []
        fine_keys: list[tuple[int, int]] = []
        fine_positions: list[int] = []
        last_key = (BEFORE_ALL.tx, BEFORE_ALL.op)
        last_indexed = last_fine = HEADER_SIZE
        valid_end = HEADER_SIZE
        try:
            for position, tx, op, payload in _iter_records(_Bytes(fd, file_size), HEADER_SIZE, file_size):
                key = (tx, op)
                if key <= last_key or (op == INF_OP and tx != 0):
                    raise _BadRecord(position, "offset out of order")
                if position - last_fine >= FINE_INDEX_EVERY_BYTES or position - last_indexed >= INDEX_EVERY_BYTES:
                    if position - last_indexed >= INDEX_EVERY_BYTES:
                        index_keys.append(key)
                        index_positions.append(position)
                        last_indexed = position
                        fine_keys.clear()
                        fine_positions.clear()
                    fine_keys.append(key)
                    fine_positions.append(position)
                    last_fine = position
                last_key = key
                valid_end = position + _RECORD_SIZE + len(payload)
        except _BadRecord as bad:
            if bad.position < durable_mark:
                raise ShapeLogCorrupt(
                    f"{directory / LOG_FILE}: {bad}, but bytes up to {durable_mark} were synced"
                ) from None
            log.warning("%s: dropping torn tail (%s, %d bytes)", directory / LOG_FILE, bad, file_size - valid_end)
            os.ftruncate(fd, valid_end)
        if durable_mark > valid_end:
            raise ShapeLogCorrupt(f"{directory / LOG_FILE}: ends at {valid_end}, synced up to {durable_mark}")
        # Records that survived only in the page cache (the process died, the machine did not) are served
        # from now on, so they must be on disk before anyone reads them.
        os.fdatasync(fd)
        if valid_end != durable_mark:
            _pwrite_all(watermark_fd, _encode_watermark(valid_end), 0)
        last_offset = BEFORE_ALL if last_key[0] == -1 else LogOffset(*last_key)
        return cls(directory, fd, valid_end, last_offset, index_keys, index_positions, fine_keys, fine_positions)

    # -- writing -----------------------------------------------------------------------------------------

    @property
    def last_offset(self) -> LogOffset:
        """Offset of the last appended entry, synced or not (BEFORE_ALL when empty).

        After a crash and reopen this is the last entry that reached the file; the engine skips replayed
        entries at or below it, which is exact as long as it assigns offsets deterministically
        (`<commit lsn>_<op position>`).
        """
        return LogOffset(*self._last_key)

    @property
    def durable_offset(self) -> LogOffset:
        """Offset of the last entry made durable by `sync()`."""
        return LogOffset(*self._synced_key)

    @property
    def visible_offset(self) -> LogOffset:
        """Offset of the last entry readers can see (`flush()` or `sync()`): what `offset=now` resolves to."""
        return LogOffset(*self._view.key)

    @property
    def size_bytes(self) -> int:
        """Bytes of visible log, header included."""
        return self._view.end

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, entries: Iterable[tuple[LogOffset, bytes]]) -> None:
        """Buffer entries; they become visible at the next `flush()` or `sync()`, durable at the next `sync()`.

        Offsets must be strictly greater than `last_offset` and increasing within the batch; a bad batch is
        refused whole (ValueError) with nothing appended.
        """
        self.append_keyed([(offset.tx, offset.op, message) for offset, message in entries])

    def append_keyed(self, entries: Iterable[tuple[int, int, bytes]], *, show: bool = False) -> None:
        """`append()` of (tx, op, message) entries, for a caller that makes valid offsets itself (the engine:
        no LogOffset object per entry on its busiest path). `show`: then `flush()`, under the same lock."""
        published = None
        with self._append_lock:
            if self._closed or self._failure is not None:
                self._check_writable()
            encoded = bytearray()
            new_index: list[tuple[tuple[int, int], int]] | None = None
            new_fine: list[tuple[tuple[int, int], int]] | None = None
            last_key = self._last_key
            last_indexed = self._last_index_position
            last_fine = self._last_fine_position
            position = self._buffer_start + len(self._buffer)
            for tx, op, message in entries:
                key = (tx, op)
                if key <= last_key:
                    raise ValueError(f"offset {LogOffset(tx, op)} is not after {LogOffset(*last_key)}")
                length = len(message)
                if not length:
                    raise ValueError(f"empty message at {LogOffset(tx, op)}")
                if length > MAX_ENTRY_BYTES:
                    raise ValueError(f"message at {LogOffset(tx, op)} is larger than {MAX_ENTRY_BYTES} bytes")
                if position - last_fine >= FINE_INDEX_EVERY_BYTES or position - last_indexed >= INDEX_EVERY_BYTES:
                    if position - last_indexed >= INDEX_EVERY_BYTES:
                        if new_index is None:
                            new_index = []
                        new_index.append((key, position))
                        last_indexed = position
                    if new_fine is None:
                        new_fine = []
                    new_fine.append((key, position))
                    last_fine = position
                prefix = _CRC_PREFIX.pack(length, tx, op)
                encoded += _LENGTH_CRC.pack(length, zlib.crc32(message, zlib.crc32(prefix)))
                encoded += prefix[4:]
                encoded += message
                position += _RECORD_SIZE + length
                last_key = key
            if last_key is not self._last_key:  # something was appended
                if new_index is not None:
                    if self._pending_index is None:
                        self._pending_index = new_index
                    else:
                        self._pending_index += new_index
                if new_fine is not None:
                    if self._pending_fine is None:
                        self._pending_fine = new_fine
                    else:
                        self._pending_fine += new_fine
                self._last_index_position = last_indexed
                self._last_fine_position = last_fine
                self._last_key = last_key
                if show and not self._buffer:
                    self._unwritten += (encoded,)  # never changed again: readers may hold it
                    self._buffer_start += len(encoded)
                else:
                    self._buffer += encoded
                    if len(self._buffer) >= FLUSH_BUFFER_BYTES:
                        self._write_file_locked()
            if show:
                published = self._show_locked()
        if published is not None:
            self._notify(published)

    def flush(self) -> LogOffset:
        """Show everything appended so far to readers (from memory) and wake them, without writing or waiting
        for the disk; returns the visible offset. Cheap: the engine flushes every log a batch touched.

        Readers may now see entries a crash (of the process, or of the machine) would lose: whoever feeds the
        log must be able to feed them again after one (the engine confirms to Postgres only what `sync()`
        has made durable, Postgres sends the rest again, and entries at or below `last_offset` are skipped as
        already there).
        """
        with self._append_lock:
            self._check_writable()
            published = self._show_locked()
            shown = self._view.key
        if published is not None:
            self._notify(published)
        return LogOffset(*shown)

    def _show_locked(self) -> _Published | None:
        """flush() under _append_lock."""
        if self._buffer:
            self._unwritten += (self._buffer,)  # never changed again: readers may hold it
            self._buffer_start += len(self._buffer)
            self._buffer = bytearray()
        return self._publish_locked()

    def sync(self) -> LogOffset:
        """Write and fdatasync everything appended so far, showing it to readers; returns the durable offset.

        When it returns, every entry appended before the call survives a crash or power loss.
        """
        with self._sync_lock:
            return self._sync_locked()

    def _sync_locked(self) -> LogOffset:
        pending = self._prepare_sync_locked()
        if pending is not None:
            try:
                os.fdatasync(self._fd)
            except BaseException as exc:
                self._sync_failed(exc, "fdatasync")
            self._complete_sync_locked(pending, time.monotonic())
        return LogOffset(*self._synced_key)

    def _prepare_sync_locked(self) -> _PendingSync | None:
        """Write everything appended to the file and show it; what an fsync now makes durable (None: nothing
        new since the last sync). The caller holds _sync_lock, not _append_lock: appends and flushes go on
        while it waits for the disk."""
        with self._append_lock:
            self._check_writable()
            self._write_file_locked()
            published = self._publish_locked()
            end, last = self._file_end, self._last_key
        if published is not None:
            self._notify(published)
        return None if end == self._synced_end else _PendingSync(end, last)

    def _sync_failed(self, exc: BaseException, what: str) -> NoReturn:
        # After a failed fsync the page cache may hold data the disk never got, so nothing written since the
        # last good sync can be trusted (see PostgreSQL's "fsyncgate").
        self._fail(exc)
        raise ShapeLogFailed(f"{self.directory}: {what} failed: {exc}") from exc

    def _complete_sync_locked(self, pending: _PendingSync, now: float) -> None:
        if now - self._watermark_written_at >= WATERMARK_INTERVAL_S:
            self._write_watermark(pending.end)
            self._watermark_written_at = now
        # Shown when it was written (_prepare_sync_locked), so what is durable is always visible too.
        self._synced_end, self._synced_key = pending.end, pending.last

    def _write_watermark(self, end: int) -> None:
        try:
            fd = os.open(self.directory / WATERMARK_FILE, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _pwrite_all(fd, _encode_watermark(end), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            # Only a hint for telling damage from a torn tail on open; the data itself is durable.
            log.warning("%s: cannot update the durable mark: %s", self.directory, exc)

    def _write_file_locked(self) -> None:
        """Write the unwritten and the appended bytes to the file, no fsync (caller holds _append_lock)."""
        if not self._unwritten and not self._buffer:
            return
        if not self._unwritten:
            data: bytes | bytearray = self._buffer
        elif len(self._unwritten) == 1 and not self._buffer:
            data = self._unwritten[0]
        else:
            data = b"".join([*self._unwritten, self._buffer])
        try:
            _pwrite_all(self._fd, data, self._file_end)
        except BaseException as exc:
            self._fail(exc)
            raise ShapeLogFailed(f"{self.directory}: write failed: {exc}") from exc
        self._file_end += len(data)
        self._buffer_start = self._file_end
        self._buffer = bytearray()
        self._unwritten = ()
        view = self._view
        if view.memory:  # what was shown from memory is in the file now
            self._view = tuple.__new__(_View, (view.end, view.key, self._file_end, ()))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc

    def _check_writable(self) -> None:
        if self._closed:
            raise ShapeLogClosed(f"{self.directory} is closed")
        if self._failure is not None:
            raise ShapeLogFailed(f"{self.directory}: a write failed ({self._failure}); reopen the log")

    def _publish_locked(self) -> _Published | None:
        """Show readers everything up to _buffer_start (caller holds _append_lock, so publications are in
        order). Returns who must be told, to be told without the lock: None when nothing new was shown or
        nobody waits or listens."""
        end = self._buffer_start
        if end == self._view.end:  # the view only ever changes under _append_lock
            return None
        last = self._last_key
        view = tuple.__new__(_View, (end, last, self._file_end, self._unwritten))  # without _View.__new__
        new_index, new_fine = self._pending_index, self._pending_fine
        if new_index is None and new_fine is None:
            self._view = view  # readers see the old view or this one, and the same index with either
        else:
            self._pending_index = self._pending_fine = None
            if new_index is not None:
                # The fine index starts again at the newest sparse-index point (which is a fine point too).
                cut = new_index[-1][1]
                new_fine = [point for point in new_fine or () if point[1] >= cut]
            with self._state:
                if new_index is not None:
                    for key, position in new_index:
                        self._index_keys.append(key)
                        self._index_positions.append(position)
                    self._fine_keys.clear()
                    self._fine_positions.clear()
                if new_fine:
                    for key, position in new_fine:
                        self._fine_keys.append(key)
                        self._fine_positions.append(position)
                self._view = view
        # After the view: a waiter registers and then looks at the view (wait_for_data), so it either sees
        # this one or is seen here.
        if not self._waiters and not self._listeners:
            return None
        with self._state:
            woken = [waiter for waiter in self._waiters or () if (waiter.after.tx, waiter.after.op) < last]
            if woken:
                assert self._waiters is not None
                self._waiters.difference_update(woken)
            listeners = list(self._listeners or ())
        return _Published(LogOffset(*last), woken, listeners)

    def _notify(self, published: _Published) -> None:
        for waiter in published.woken:
            _wake(waiter)
        for listener in published.listeners:
            try:
                listener(published.last)
            except Exception:
                log.exception("%s: listener failed", self.directory)

    # -- reading -----------------------------------------------------------------------------------------

    def read(self, after: LogOffset, max_bytes: int = DEFAULT_READ_BYTES) -> LogRead:
        """Visible entries (flushed or synced) with offset strictly greater than `after`, in order.

        Stops before the payload total would pass `max_bytes`, but always returns at least one entry when
        one exists, so a caller always makes progress. Returns `([], after)` when nothing is newer.
        """
        with self._state:
            self._check_open()
            view = self._view
            end = view.end
            if (after.tx, after.op) >= view.key:
                return LogRead([], after)
            start = self._start_position_locked(after)
            source = _Bytes(self._fd, view.memory_start, view.memory)
            self._active_reads += 1
        try:
            messages: list[bytes] = []
            total = 0
            after_key = (after.tx, after.op)
            last_key = after_key
            for _position, tx, op, payload in self._records(source, start, end):
                if (tx, op) <= after_key:
                    continue
                if messages and total + len(payload) > max_bytes:
                    break
                messages.append(bytes(payload))
                total += len(payload)
                last_key = (tx, op)
            last_offset = after if last_key == after_key else LogOffset(*last_key)
            return LogRead(messages, last_offset)
        finally:
            self._end_read()

    def contains(self, offset: LogOffset) -> bool:
        """True for `-1` and for the offset of any synced entry: exactly the offsets this log hands out."""
        if offset == BEFORE_ALL:
            return True
        with self._state:
            self._check_open()
            view = self._view
            key = (offset.tx, offset.op)
            if key >= view.key:
                return key == view.key
            end = view.end
            start = self._start_position_locked(offset)
            source = _Bytes(self._fd, view.memory_start, view.memory)
            self._active_reads += 1
        try:
            target = (offset.tx, offset.op)
            for _position, tx, op, _payload in self._records(source, start, end):
                if (tx, op) >= target:
                    return (tx, op) == target
            return False
        finally:
            self._end_read()

    def _start_position_locked(self, offset: LogOffset) -> int:
        """A byte position at or before the first record >= `offset`: the last index point whose first
        record is <= offset (every record > offset lies beyond it), from the fine index when it covers it."""
        key = (offset.tx, offset.op)
        if self._fine_keys and key >= self._fine_keys[0]:
            slot = bisect.bisect_right(self._fine_keys, key) - 1
            return self._fine_positions[slot]
        slot = bisect.bisect_right(self._index_keys, key) - 1
        return self._index_positions[slot] if slot >= 0 else HEADER_SIZE

    def _records(self, source: _Bytes, start: int, end: int) -> Iterator[tuple[int, int, int, memoryview]]:
        try:
            yield from _iter_records(source, start, end)
        except _BadRecord as bad:
            raise ShapeLogCorrupt(f"{self.directory / LOG_FILE}: {bad}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise ShapeLogClosed(f"{self.directory} is closed")

    def _end_read(self) -> None:
        with self._state:
            self._active_reads -= 1
            if self._active_reads == 0 and self._reads_done is not None:
                self._reads_done.set()

    # -- waiting for new data ----------------------------------------------------------------------------

    async def wait_for_data(self, after: LogOffset, timeout: float | None = None) -> bool:
        """Wait until an entry newer than `after` is synced; True if so, False on timeout or close."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(after, loop, loop.create_future())
        with self._state:
            if self._closed:
                return False
            if self._waiters is None:
                self._waiters = set()
            self._waiters.add(waiter)
            # Looked at after registering: a publication either shows its view here or sees this waiter.
            if self._view.key > (after.tx, after.op):
                self._waiters.discard(waiter)
                return True
        try:
            async with asyncio.timeout(timeout):
                await waiter.future
        except TimeoutError:
            pass
        finally:
            with self._state:
                if self._waiters is not None:
                    self._waiters.discard(waiter)
        return not self._closed and self._view.key > (after.tx, after.op)

    def add_listener(self, listener: Callable[[LogOffset], None]) -> Callable[[], None]:
        """Call `listener(visible_offset)` after each flush or sync that shows new data; returns an unsubscriber.

        It runs in the syncing thread and must be quick (e.g. `loop.call_soon_threadsafe(...)`).
        """
        with self._state:
            if self._listeners is None:
                self._listeners = []
            self._listeners.append(listener)

        def remove() -> None:
            with self._state, contextlib.suppress(ValueError):
                assert self._listeners is not None  # made by add_listener
                self._listeners.remove(listener)

        return remove

    # -- closing -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Sync what is buffered (unless the log has failed), wake every waiter, then release the files.

        Waits for reads in progress to finish; afterwards every call but `close()` raises ShapeLogClosed.
        """
        with self._sync_lock:
            if self._closed:
                return
            try:
                if self._failure is None:
                    self._sync_locked()
                    self._write_watermark(self._synced_end)
            finally:
                with self._append_lock:
                    with self._state:
                        self._closed = True  # no read starts from now on
                        woken = list(self._waiters or ())
                        self._waiters = None
                        if self._active_reads:
                            self._reads_done = threading.Event()
                        reads_done = self._reads_done
                    if reads_done is not None:
                        reads_done.wait()
                    os.close(self._fd)  # also drops the flock
                for waiter in woken:
                    _wake(waiter)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _wake(waiter: _Waiter) -> None:
    def resolve() -> None:
        if not waiter.future.done():
            waiter.future.set_result(None)

    # The waiting loop may already be gone (its request was cancelled and the loop closed).
    with contextlib.suppress(RuntimeError):
        waiter.loop.call_soon_threadsafe(resolve)


def _encode_watermark(end: int) -> bytes:
    return _WATERMARK.pack(_WATERMARK_MAGIC, end, zlib.crc32(_WATERMARK_MAGIC + end.to_bytes(8, "little")))


def _decode_watermark(data: bytes) -> int:
    """The durable mark, or HEADER_SIZE (nothing known durable) when the mark is missing or torn."""
    if len(data) != _WATERMARK.size:
        return HEADER_SIZE
    magic, end, crc = _WATERMARK.unpack(data)
    if magic != _WATERMARK_MAGIC or crc != zlib.crc32(magic + end.to_bytes(8, "little")):
        return HEADER_SIZE
    return int(end)
