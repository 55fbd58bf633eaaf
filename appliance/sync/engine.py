"""The sync engine: shapes, their logs, and the replication stream that feeds them. No HTTP in here.

    engine = SyncEngine(EngineConfig(dsn=..., data_dir=Path("/srv/tenant/sync")))
    await engine.start()
    shape = await engine.get_or_create(ShapeDefinition("public", "items", where="house_id = $1", params=("7",)))
    await engine.ensure_snapshot(shape)
    ...  # read shape.log; shape.wait(...) for news
    await engine.stop()

One asyncio task consumes the replication stream. For each batch of transactions already delivered it
appends every shape's messages to that shape's log, fsyncs every log it touched, and only then confirms the
batch's end LSN to Postgres, so a confirmed transaction is always durable in every shape log (kill -9 at any
point loses nothing: Postgres resends what was not confirmed, and each log skips offsets it already has,
offsets being deterministic: `<commit LSN>_<2 × change index (+1 for the insert half of a key change)>`).

A new shape starts *snapshotting*: from the moment it is registered (between two transactions) the engine
buffers every transaction touching its table; the snapshot is taken in a worker thread; then, between two
transactions again, the buffered transactions the snapshot does not already contain (xid not visible in its
`pg_current_snapshot()`) are appended after it and the shape becomes *ready*, remembering the end LSN of the
last transaction decided that way (`live_from_lsn`): after a restart, replayed transactions up to it are
skipped for that shape.

Shapes rotate (new handle, clients get 409 and start over) on TRUNCATE of their table, on a schema change of
their table (seen in the stream, or at startup by comparing the catalog with what the shape was built
from), when the replication slot was lost or recreated (the log would have a hole), and when a snapshot was
cut short by a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import psycopg

from appliance.sync import gcpolicy
from appliance.sync.catalog import (
    CatalogError,
    TableInfo,
    load_table,
    publication_covers,
    table_not_found_message,
)
from appliance.sync.defaults import CHUNK_BYTES, PUBLICATION, SLOT
from appliance.sync.offsets import LogOffset
from appliance.sync.registry import (
    ShapeDefinition,
    ShapeRecord,
    ShapeRegistry,
    ShapeState,
    SnapshotInfo,
)
from appliance.sync.replication import (
    Change,
    RelationInfo,
    ReplicationError,
    ReplicationStream,
    SlotLostError,
    Transaction,
    ensure_publication_and_slot,
)
from appliance.sync.routing import TableRoutes
from appliance.sync.shape import CompiledShape, ShapeMessage
from appliance.sync.shapelog import ShapeLog, ShapeLogError, fsync_directory, sync_logs
from appliance.sync.snapshot import ConnectionPool, SnapshotCancelled, SubsetResult, take_snapshot, take_subset
from appliance.sync.subset import SubsetRequest, bind_subset

log = logging.getLogger(__name__)

TABLE_FILE: Final = "table.json"
# Transactions stored per fsync round at most: bounds the latency of the first one in a burst.
MAX_BATCH: Final = 500
# From this many shape logs touched in one round, one syncfs makes them durable instead of an fdatasync each
# (shapelog.sync_logs); below it, each log's own fdatasync costs less than flushing the whole filesystem.
SYNCFS_MIN_LOGS: Final = 16


class PublicationError(Exception):
    """The shape's table is not published and the engine's role cannot add it."""


class SnapshotFailed(Exception):
    """The snapshot of a shape failed; the shape was dropped."""


@dataclass
class EngineConfig:
    dsn: str
    data_dir: Path
    publication: str = PUBLICATION
    slot: str = SLOT
    chunk_bytes: int = CHUNK_BYTES
    max_concurrent_snapshots: int = 4
    max_concurrent_subsets: int = 8
    status_interval: float = 10.0
    reconnect_delay: tuple[float, float] = (0.1, 5.0)


def full_xid(xid32: int, reference: int) -> int:
    """The 64-bit xid (epoch included) of a 32-bit xid seen near `reference` (a 64-bit xid): the one within
    2^31 of it, which is how Postgres itself widens xids."""
    candidate = (reference & ~0xFFFFFFFF) | (xid32 & 0xFFFFFFFF)
    if candidate > reference + 2**31:
        candidate -= 2**32
    elif candidate < reference - 2**31:
        candidate += 2**32
    return candidate


def visible_in(snapshot: SnapshotInfo, xid32: int) -> bool:
    """Whether a transaction's effects are already in a snapshot (committed before it was taken)."""
    xid = full_xid(xid32, snapshot.xmax)
    if xid < snapshot.xmin:
        return True
    return xid < snapshot.xmax and xid not in snapshot.xip_list


@dataclass(eq=False, slots=True)
class ShapeRuntime:
    """A shape as the engine holds it while running. `compiled` is None until a rotated or recovered shape
    has been checked against the catalog again (at its first request)."""

    _record: ShapeRecord
    log: ShapeLog
    compiled: CompiledShape | None = None
    buffer: list[Transaction] | None = None
    snapshot_task: asyncio.Task[None] | None = None
    error: Exception | None = None
    gone: bool = False
    # Made only while something waits or a snapshot runs: an engine holds thousands of shapes, and an Event
    # each (a condition, a lock and a deque inside) was about a tenth of its memory.
    cancelled: threading.Event | None = None  # set to stop the snapshot under way
    checked_relation: RelationInfo | None = None  # the last stream relation found to match `compiled.table`
    _changed: asyncio.Event | None = None
    _prepare_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # What the engine's busiest loop reads of the record, on the runtime itself (one object less to fetch per
    # change and shape): None while the shape takes no live entries (snapshotting), else the end LSN up to
    # which transactions were decided when it became ready (0: none).
    live_after: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.record = self._record

    @property
    def record(self) -> ShapeRecord:
        return self._record

    @record.setter
    def record(self, record: ShapeRecord) -> None:
        self._record = record
        self.live_after = (record.live_from_lsn or 0) if record.state == ShapeState.ready else None

    @property
    def handle(self) -> str:
        return self.record.handle

    @property
    def definition(self) -> ShapeDefinition:
        return self.record.definition

    @property
    def ready(self) -> bool:
        return self.record.state == ShapeState.ready

    @property
    def table_key(self) -> tuple[str, str]:
        return (self.definition.schema, self.definition.table)

    def notify(self) -> None:
        """Wake everyone waiting in `wait()` (state changed: ready, rotated, deleted, failed)."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def cancel_snapshot(self) -> None:
        if self.cancelled is not None:
            self.cancelled.set()

    async def wait(self, after: LogOffset, timeout: float) -> None:
        """Until the log has data after `after`, the shape's state changes, or `timeout` seconds pass."""
        if timeout <= 0:
            return
        if self._changed is None:
            self._changed = asyncio.Event()
        state_changed = self._changed
        if self.gone or self.error is not None:
            return
        data = asyncio.ensure_future(self.log.wait_for_data(after, timeout))
        state = asyncio.ensure_future(state_changed.wait())
        try:
            await asyncio.wait({data, state}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (data, state):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(data, state, return_exceptions=True)


EngineStatus = Literal["starting", "active", "stopping"]


class SyncEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.status: EngineStatus = "starting"
        self.last_lsn = 0  # commit LSN of the newest transaction processed (Electric's global_last_seen_lsn)
        self.last_end_lsn = 0  # end LSN of the newest transaction processed
        self.transactions_processed = 0
        self.changes_processed = 0
        self.rotations = 0
        self.slot_losses = 0
        self.last_error: str | None = None
        self.registry: ShapeRegistry | None = None
        self._lock = asyncio.Lock()  # the order of log writes: transactions, shape registration, rotation
        # Creations under way, by canonical key: a second request for the same shape waits for the first one's
        # rather than creating it twice, while different shapes are created concurrently.
        self._creating: dict[str, asyncio.Future[ShapeRuntime]] = {}
        self._snapshots = asyncio.Semaphore(config.max_concurrent_snapshots)
        # Subset queries are short and many (a live query each): their own bound, so they never wait behind
        # a large initial snapshot.
        self._subsets = asyncio.Semaphore(config.max_concurrent_subsets)
        self._subset_connections = ConnectionPool(config.dsn, config.max_concurrent_subsets)
        # Catalog reads and initial snapshots: creating a shape opened two connections, most of its cost.
        self._connections = ConnectionPool(config.dsn, config.max_concurrent_snapshots + 1)
        self._by_handle: dict[str, ShapeRuntime] = {}
        self._by_key: dict[str, ShapeRuntime] = {}
        self._by_table: dict[tuple[str, str], set[ShapeRuntime]] = {}
        self._routes: dict[tuple[str, str], TableRoutes] = {}
        self._relations_checked: dict[tuple[str, str], RelationInfo] = {}
        self._task: asyncio.Task[None] | None = None
        # Shapes whose logs were written but not yet synced, and the end LSN of the newest batch among them.
        self._unsynced: set[ShapeRuntime] = set()
        self._unsynced_lsn = 0
        self._unsynced_changed = asyncio.Event()
        self._durability_closing = False
        self._stream: ReplicationStream | None = None
        self._stopping = False
        self._active = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin_shutdown(self) -> None:
        """From any thread (a signal handler): answer waiting long polls now, so a graceful shutdown does not
        have to cut them off."""
        self.status = "stopping"

        def wake_all() -> None:
            for runtime in list(self._by_handle.values()):
                runtime.notify()

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(wake_all)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the data dir and start consuming in the background; `status` turns active once streaming."""
        self._loop = asyncio.get_running_loop()
        self.registry = await asyncio.to_thread(ShapeRegistry.open, self.config.data_dir)
        self._task = asyncio.create_task(self._run(), name="sync-engine")

    async def stop(self) -> None:
        self._stopping = True
        self.status = "stopping"
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for runtime in list(self._by_handle.values()):
            runtime.cancel_snapshot()
            if runtime.snapshot_task is not None:
                runtime.snapshot_task.cancel()
        async with self._lock:
            for runtime in list(self._by_handle.values()):
                with contextlib.suppress(ShapeLogError):
                    await asyncio.to_thread(runtime.log.close)
            if self.registry is not None:
                self.registry.close()
        await asyncio.to_thread(self._subset_connections.close)
        await asyncio.to_thread(self._connections.close)

    async def wait_active(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._active.wait()
        return self._active.is_set()

    async def _run(self) -> None:
        recovered = False
        just_rotated = False  # every shape was rotated for a lost slot: its re-creation needs no second round
        while not self._stopping:
            try:
                setup = await asyncio.to_thread(
                    ensure_publication_and_slot, self.config.dsn, self.config.publication, self.config.slot, []
                )
                if not recovered:
                    await self._recover_shapes(rotate_all=setup.slot_created or setup.slot_recreated)
                    recovered = True
                elif (setup.slot_created or setup.slot_recreated) and not just_rotated:
                    await self._rotate_all("the replication slot was recreated")
                just_rotated = False
                stream = ReplicationStream(
                    self.config.dsn,
                    slot=self.config.slot,
                    publication=self.config.publication,
                    status_interval=self.config.status_interval,
                    reconnect_delay=self.config.reconnect_delay,
                )
                self._stream = stream
                async with stream:
                    self.status = "active"
                    self._active.set()
                    self.last_error = None
                    await self._consume(stream)
            except asyncio.CancelledError:
                raise
            except SlotLostError as exc:
                log.error("%s: rotating every shape", exc)
                self.slot_losses += 1
                self.last_error = str(exc)
                await self._rotate_all(str(exc))
                just_rotated = True
            except (ReplicationError, psycopg.Error, OSError) as exc:
                self.last_error = str(exc).strip()
                log.error("replication failed: %s; retrying", self.last_error)
                await asyncio.sleep(2)
            finally:
                self._stream = None

    async def _consume(self, stream: ReplicationStream) -> None:
        """Apply transactions to the shape logs as they come; a companion task makes them durable and only
        then confirms them to Postgres.

        Readers see a batch as soon as it is appended, from memory (`ShapeLog.append_keyed(show=True)`), before
        any write or fsync: with thousands of shapes one batch touches thousands of logs, and waiting for the
        disk to take them all (a syncfs) held every change back by as long; writing each of them here instead
        (no fsync) cut the throughput with 10,000 shapes over 1,000 houses by about 40 % (a profiling run).
        The companion task writes and syncs them.
        What a crash loses was never confirmed, so Postgres sends it again on restart, and each log skips
        what it already holds (offsets are deterministic)."""
        durability = asyncio.create_task(self._keep_durable(stream), name="sync-durability")
        try:
            while not self._stopping:
                try:
                    first = await anext(stream)
                except StopAsyncIteration:
                    return
                batch = [first]
                while len(batch) < MAX_BATCH and (more := stream.get_nowait()) is not None:
                    batch.append(more)
                async with self._lock:
                    # Each shape's entries of the whole batch go to its log in one append.
                    pending: dict[ShapeRuntime, list[tuple[int, int, bytes]]] = {}
                    for txn in batch:
                        await self._process(txn, pending)
                    failed: list[tuple[ShapeRuntime, ShapeLogError]] = []
                    for runtime, entries in pending.items():
                        if runtime.gone:
                            continue
                        try:
                            runtime.log.append_keyed(entries, show=True)
                        except ShapeLogError as exc:
                            failed.append((runtime, exc))
                    if failed:
                        failed_runtimes, errors = zip(*failed, strict=True)
                        await self._rotate_failed(list(failed_runtimes), list(errors), "write")
                self._unsynced.update(pending)  # the gone ones too: the companion task skips them
                self._unsynced_lsn = max(self._unsynced_lsn, batch[-1].end_lsn)
                self._unsynced_changed.set()
        finally:
            self._durability_closing = True
            self._unsynced_changed.set()
            await durability
            self._durability_closing = False

    async def _keep_durable(self, stream: ReplicationStream) -> None:
        """Sync the logs written since the last round, then confirm their transactions to Postgres; one round
        at a time, each taking whatever accumulated while the previous one ran. Ends, after a last round,
        when `_consume` does."""
        while True:
            await self._unsynced_changed.wait()
            self._unsynced_changed.clear()
            runtimes, lsn = [r for r in self._unsynced if not r.gone], self._unsynced_lsn
            self._unsynced = set()
            await self._sync(runtimes)
            if lsn:
                stream.confirm(lsn)
            if self._durability_closing and not self._unsynced:
                return

    async def _sync(self, runtimes: list[ShapeRuntime]) -> None:
        if not runtimes:
            return
        results: list[Any]
        if len(runtimes) >= SYNCFS_MIN_LOGS:
            results = await asyncio.to_thread(sync_logs, [runtime.log for runtime in runtimes])
        else:
            results = await asyncio.gather(
                *(asyncio.to_thread(runtime.log.sync) for runtime in runtimes), return_exceptions=True
            )
        if any(isinstance(result, BaseException) for result in results):
            async with self._lock:
                await self._rotate_failed(runtimes, results, "sync")

    async def _rotate_failed(self, runtimes: list[ShapeRuntime], results: list[Any], what: str) -> None:
        """Start over every shape whose log could not be written or synced (callers hold self._lock): what
        reached its disk is unknown, so the log cannot be served on. A log closed meanwhile belongs to a shape
        already rotated or deleted."""
        for runtime, result in zip(runtimes, results, strict=True):
            if isinstance(result, BaseException) and not runtime.gone:
                log.error("shape %s: cannot %s its log (%s); rotating it", runtime.handle, what, result)
                await self._rotate(runtime)

    # -- transactions ------------------------------------------------------------------------------------

    async def _process(self, txn: Transaction, pending: dict[ShapeRuntime, list[tuple[int, int, bytes]]]) -> None:
        """Add the transaction's messages for every ready shape it concerns to `pending` (the batch's entries
        per shape, appended and synced by the caller); buffer it for snapshotting ones."""
        self.transactions_processed += 1
        self.changes_processed += len(txn.changes)
        # No log holds an entry of a transaction committed after every one processed so far (offsets are
        # <commit LSN>_<op>): only one sent again (after a restart or reconnect) needs each log's last offset.
        replayed = txn.commit_lsn <= self.last_lsn
        self.last_lsn = max(self.last_lsn, txn.commit_lsn)
        self.last_end_lsn = max(self.last_end_lsn, txn.end_lsn)
        if not self._by_table:
            return
        by_table: dict[tuple[str, str], list[tuple[int, Change]]] = {}
        rotate: set[ShapeRuntime] = set()
        for index, change in enumerate(txn.changes):
            name = (change.relation.schema, change.relation.table)
            if change.kind == "schema":
                names = {name}
                if change.previous_relation is not None:
                    names.add((change.previous_relation.schema, change.previous_relation.table))
                for table in names:
                    rotate |= self._by_table.get(table, set())
                continue
            if name in self._by_table:
                by_table.setdefault(name, []).append((index, change))
        for table, changes in by_table.items():
            routes = self._routes.get(table)
            if routes is None:
                continue
            rotate |= self._check_relations(table, changes)
            self._route(txn, changes, routes, pending, rotate, replayed)
        for runtime in rotate:
            pending.pop(runtime, None)
            await self._rotate(runtime)

    def _route(
        self,
        txn: Transaction,
        changes: list[tuple[int, Change]],
        routes: TableRoutes,
        pending: dict[ShapeRuntime, list[tuple[int, int, bytes]]],
        rotate: set[ShapeRuntime],
        replayed: bool,
    ) -> None:
        """Each change of one table to the shapes it may concern (routing.py), in transaction order: their
        entries go straight to `pending`, the shapes that must start over to `rotate`.

        This runs once per change and shape, the engine's busiest loop, so there is nothing in it per shape
        and transaction but the `last` header: each shape's newest message is held back until the next one
        (encoded without it) or the end of the transaction (encoded with it). Grouping the changes by shape
        first cost as much again when a transaction touched a thousand shapes once each."""
        lsn, end_lsn = txn.commit_lsn, txn.end_lsn
        lsn_text, xid_text = str(lsn), str(txn.xid)
        held: dict[ShapeRuntime, tuple[int, ShapeMessage]] = {}  # each shape's newest message and its op
        for index, change in changes:
            truncate = change.kind == "truncate"
            for runtime in routes.candidates(change):
                live_after = runtime.live_after
                if live_after is None or end_lsn <= live_after or runtime in rotate:
                    # Snapshotting: buffered, once per transaction. Ready: decided when the shape became ready
                    # (the transaction is replayed after a restart). Or rotating.
                    buffer = runtime.buffer
                    if (
                        live_after is None
                        and buffer is not None
                        and (not buffer or buffer[-1] is not txn)
                        and runtime not in rotate
                    ):
                        buffer.append(txn)
                    continue
                if truncate or (
                    change.relation is not runtime.checked_relation and not _same_table(runtime, change.relation)
                ):
                    rotate.add(runtime)
                    held.pop(runtime, None)
                    continue
                compiled = runtime.compiled
                assert compiled is not None
                for message in compiled.convert(change):
                    op = 2 * index + message.op_delta
                    if replayed:
                        last = runtime.log.last_offset
                        if (lsn, op) <= (last.tx, last.op):
                            continue  # already in the log: a transaction resent after a crash
                    before = held.get(runtime)
                    held[runtime] = (op, message)
                    if before is not None:
                        before_op, before_message = before
                        entry = (
                            lsn,
                            before_op,
                            before_message.encode(compiled.relation_json, lsn_text, before_op, xid_text, False),
                        )
                        its_pending = pending.get(runtime)
                        if its_pending is None:
                            pending[runtime] = [entry]
                        else:
                            its_pending.append(entry)
        for runtime, (op, message) in held.items():
            compiled = runtime.compiled
            assert compiled is not None
            entry = (lsn, op, message.encode(compiled.relation_json, lsn_text, op, xid_text, True))
            its_pending = pending.get(runtime)
            if its_pending is None:
                pending[runtime] = [entry]
            else:
                its_pending.append(entry)

    def _check_relations(self, table: tuple[str, str], changes: list[tuple[int, Change]]) -> set[ShapeRuntime]:
        """The ready shapes of `table` built from another definition of it than the stream now describes.

        Routing offers a change to few shapes, so a table changed while the engine was not looking (seen only
        as a new relation description) is checked here for all its shapes, once per description."""
        stale: set[ShapeRuntime] = set()
        for _index, change in changes:
            if self._relations_checked.get(table) is change.relation:
                continue
            signature = _relation_signature(change.relation)
            for runtime in self._by_table.get(table, ()):
                if runtime.ready and runtime.compiled is not None and not _same_table(
                    runtime, change.relation, signature
                ):
                    stale.add(runtime)
            self._relations_checked[table] = change.relation
        return stale

    def _entries(
        self, runtime: ShapeRuntime, txn: Transaction, changes: list[tuple[int, Change]]
    ) -> list[tuple[int, int, bytes]] | None:
        """The log entries (tx, op, message) of a transaction for one shape (None: the shape must rotate, e.g.
        TRUNCATE): the buffered transactions of a snapshotting shape, once its snapshot is taken (`_route` does
        the same for the others, faster, for all the shapes a transaction concerns at once)."""
        compiled = runtime.compiled
        assert compiled is not None
        produced: list[tuple[int, ShapeMessage]] = []
        for index, change in changes:
            if change.kind == "truncate" or not _same_table(runtime, change.relation):
                return None
            for message in compiled.convert(change):
                produced.append((2 * index + message.op_delta, message))
        if not produced:
            return []
        lsn, lsn_text, xid_text = txn.commit_lsn, str(txn.commit_lsn), str(txn.xid)
        last = runtime.log.last_offset
        last_key = (last.tx, last.op)
        final = len(produced) - 1
        entries: list[tuple[int, int, bytes]] = []
        for position, (op, message) in enumerate(produced):
            if (lsn, op) <= last_key:
                continue  # already in the log: a transaction resent after a crash
            entries.append(
                (lsn, op, message.encode(compiled.relation_json, lsn_text, op, xid_text, position == final))
            )
        return entries

    # -- shapes: lookups ---------------------------------------------------------------------------------

    def lookup(self, definition: ShapeDefinition) -> ShapeRuntime | None:
        return self._by_key.get(definition.canonical_key)

    def by_handle(self, handle: str) -> ShapeRuntime | None:
        return self._by_handle.get(handle)

    def shapes(self) -> list[ShapeRuntime]:
        return list(self._by_handle.values())

    def _add(self, runtime: ShapeRuntime) -> None:
        self._by_handle[runtime.handle] = runtime
        self._by_key[runtime.definition.canonical_key] = runtime
        self._by_table.setdefault(runtime.table_key, set()).add(runtime)
        self._routes.setdefault(runtime.table_key, TableRoutes()).add(runtime, runtime.compiled)

    def _remove(self, runtime: ShapeRuntime) -> None:
        gcpolicy.released()
        runtime.gone = True
        runtime.cancel_snapshot()
        self._by_handle.pop(runtime.handle, None)
        if self._by_key.get(runtime.definition.canonical_key) is runtime:
            del self._by_key[runtime.definition.canonical_key]
        shapes = self._by_table.get(runtime.table_key)
        if shapes is not None:
            shapes.discard(runtime)
            if not shapes:
                del self._by_table[runtime.table_key]
        routes = self._routes.get(runtime.table_key)
        if routes is not None:
            routes.remove(runtime)
            if not len(routes):
                del self._routes[runtime.table_key]
        runtime.notify()

    # -- shapes: creating, snapshotting --------------------------------------------------------------------

    async def get_or_create(self, definition: ShapeDefinition) -> ShapeRuntime:
        """The shape for a definition, created if needed; raises CatalogError / WhereError /
        PublicationError (all the client's to fix) when the definition cannot be served."""
        existing = self.lookup(definition)
        if existing is not None:
            return existing
        key = definition.canonical_key
        under_way = self._creating.get(key)
        if under_way is not None:
            return await asyncio.shield(under_way)
        future: asyncio.Future[ShapeRuntime] = asyncio.get_running_loop().create_future()
        self._creating[key] = future
        try:
            runtime = await self._create(definition)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a creation nobody else waited for must not log "never retrieved"
            raise
        else:
            future.set_result(runtime)
            return runtime
        finally:
            del self._creating[key]

    async def _create(self, definition: ShapeDefinition) -> ShapeRuntime:
        table = await asyncio.to_thread(self._prepare_table, definition.schema, definition.table)
        compiled = CompiledShape(definition, table)
        assert self.registry is not None
        registry = self.registry
        async with self._lock:
            # A rotation (which holds the lock) may have registered its successor meanwhile.
            existing = self.lookup(definition)
            if existing is not None:
                return existing
            record, _created = await asyncio.to_thread(registry.get_or_create, definition)
            directory = registry.log_dir(record.handle)
            await asyncio.to_thread(_write_table_file, directory, table)
            shape_log = await asyncio.to_thread(ShapeLog.open, directory)
            runtime = ShapeRuntime(record, shape_log, compiled=compiled, buffer=[])
            self._add(runtime)
        return runtime

    def _prepare_table(self, schema: str, table: str) -> TableInfo:
        """The table from the catalog, published (added to the publication when the role may do that)."""
        with self._connections.connection() as conn, conn.transaction():
            info = load_table(conn, schema, table)
            if info is None:
                raise CatalogError("table", table_not_found_message(schema, table))
            covered = publication_covers(conn, self.config.publication, schema, table)
        if covered:
            return info
        try:
            ensure_publication_and_slot(self.config.dsn, self.config.publication, self.config.slot, [(schema, table)])
        except (psycopg.Error, ReplicationError) as exc:
            raise PublicationError(
                f'Table "{schema}"."{table}" is not in the publication "{self.config.publication}" and the sync '
                f"role cannot add it ({str(exc).strip()}). Add it as the table's owner: ALTER PUBLICATION "
                f'"{self.config.publication}" ADD TABLE "{schema}"."{table}"'
            ) from None
        return info

    async def ensure_snapshot(self, runtime: ShapeRuntime) -> None:
        """Make sure a snapshotting shape has its snapshot under way (compiling a rotated or recovered one
        against the catalog first: that raises, and drops the shape, if its definition no longer works)."""
        if runtime.ready or runtime.gone or runtime.snapshot_task is not None:
            return
        async with runtime._prepare_lock:
            if runtime.ready or runtime.gone or runtime.snapshot_task is not None:
                return
            if runtime.compiled is None:
                try:
                    table = await asyncio.to_thread(
                        self._prepare_table, runtime.definition.schema, runtime.definition.table
                    )
                    compiled = CompiledShape(runtime.definition, table)
                    assert self.registry is not None
                    await asyncio.to_thread(_write_table_file, self.registry.log_dir(runtime.handle), table)
                except Exception:
                    await self.delete(runtime.handle)
                    raise
                runtime.compiled = compiled
                routes = self._routes.get(runtime.table_key)
                if routes is not None and not runtime.gone:
                    routes.add(runtime, compiled)  # indexed now that its where is known
            runtime.snapshot_task = asyncio.create_task(self._snapshot(runtime), name=f"snapshot-{runtime.handle}")

    async def _snapshot(self, runtime: ShapeRuntime) -> None:
        compiled = runtime.compiled
        assert compiled is not None
        cancelled = threading.Event()
        try:
            async with self._snapshots:
                if runtime.gone:
                    return
                runtime.cancelled = cancelled
                try:
                    info = await asyncio.to_thread(
                        take_snapshot,
                        self._connections,
                        compiled,
                        runtime.log,
                        chunk_bytes=self.config.chunk_bytes,
                        cancelled=cancelled,
                    )
                finally:
                    runtime.cancelled = None
        except SnapshotCancelled:
            return
        except asyncio.CancelledError:
            cancelled.set()
            raise
        except Exception as exc:
            log.error("snapshot of shape %s failed: %s", runtime.handle, exc)
            runtime.error = SnapshotFailed(f"Failed to create snapshot: {str(exc).strip()}")
            runtime.notify()
            with contextlib.suppress(Exception):
                await self.delete(runtime.handle)
            return
        async with self._lock:
            if runtime.gone:
                return
            entries: list[tuple[int, int, bytes]] = []
            for txn in runtime.buffer or ():
                if visible_in(info, txn.xid):
                    continue
                changes = [
                    (index, change)
                    for index, change in enumerate(txn.changes)
                    if (change.relation.schema, change.relation.table) == runtime.table_key and change.kind != "schema"
                ]
                produced = self._entries(runtime, txn, changes)
                if produced is None:
                    await self._rotate(runtime)
                    return
                entries.extend(produced)
            runtime.buffer = None
            try:
                if entries:
                    runtime.log.append_keyed(entries)
                await asyncio.to_thread(runtime.log.sync)
                assert self.registry is not None
                runtime.record = await asyncio.to_thread(
                    self.registry.mark_ready, runtime.handle, info, self.last_end_lsn
                )
            except Exception as exc:
                log.error("shape %s: cannot finish its snapshot (%s); rotating it", runtime.handle, exc)
                await self._rotate(runtime)
                return
            runtime.notify()
            log.info("shape %s ready (%s.%s)", runtime.handle, *runtime.table_key)

    # -- shapes: deleting, rotating, recovering ------------------------------------------------------------

    async def query_subset(self, runtime: ShapeRuntime, subset: SubsetRequest) -> tuple[SubsetResult, LogOffset]:
        """A subset snapshot of a ready shape, and the log offset a client resumes from after it.

        The offset is the log's end *before* the snapshot's transaction starts: every change up to it was
        committed before, so the snapshot holds it; a change after it may or may not be in the snapshot, and
        the client tells which by the snapshot's xids (it drops those already visible), so none is lost or
        applied twice. Raises SubsetInvalid for a subset the shape cannot answer."""
        compiled = runtime.compiled
        assert compiled is not None and runtime.ready
        bound = bind_subset(subset, compiled)
        resume = runtime.log.visible_offset
        mark = secrets.randbelow(2**31)  # Electric's range: a JavaScript-safe integer
        async with self._subsets:
            try:
                result = await asyncio.to_thread(take_subset, self._subset_connections, compiled, bound, mark)
            except psycopg.OperationalError:
                # Kept connections the server has since closed (a Postgres restart): drop them all; one more
                # try opens a new one, and a second failure is the caller's 503.
                await asyncio.to_thread(self._subset_connections.discard_idle)
                result = await asyncio.to_thread(take_subset, self._subset_connections, compiled, bound, mark)
        return result, resume

    async def delete(self, handle: str) -> bool:
        async with self._lock:
            runtime = self._by_handle.get(handle)
            if runtime is None:
                return False
            self._remove(runtime)
            with contextlib.suppress(ShapeLogError):
                await asyncio.to_thread(runtime.log.close)
            assert self.registry is not None
            await asyncio.to_thread(self.registry.delete, handle)
            return True

    async def _rotate(self, runtime: ShapeRuntime) -> ShapeRuntime | None:
        """Replace a shape by a fresh snapshotting one with a new handle (callers hold self._lock)."""
        if runtime.gone:
            return None
        self.rotations += 1
        self._remove(runtime)
        with contextlib.suppress(ShapeLogError):
            await asyncio.to_thread(runtime.log.close)
        assert self.registry is not None
        record = await asyncio.to_thread(self.registry.rotate, runtime.handle)
        fresh = ShapeRuntime(record, await asyncio.to_thread(ShapeLog.open, self.registry.log_dir(record.handle)))
        fresh.buffer = []
        self._add(fresh)
        log.info("shape %s rotated to %s", runtime.handle, record.handle)
        return fresh

    async def _rotate_all(self, reason: str) -> None:
        async with self._lock:
            runtimes = list(self._by_handle.values())
            log.warning("rotating %d shapes: %s", len(runtimes), reason)
            for runtime in runtimes:
                await self._rotate(runtime)

    async def _recover_shapes(self, *, rotate_all: bool) -> None:
        """Load the registry's shapes: ready ones whose table is unchanged are served on; the others (cut
        short, or built on a table that changed, or after a slot loss) rotate."""
        assert self.registry is not None
        registry = self.registry
        records = registry.shapes()
        current = await asyncio.to_thread(
            self._current_tables, {(r.definition.schema, r.definition.table) for r in records}
        )
        async with self._lock:
            for record in records:
                directory = registry.log_dir(record.handle)
                stored = await asyncio.to_thread(_read_table_file, directory)
                now = current.get((record.definition.schema, record.definition.table))
                usable = (
                    not rotate_all
                    and record.state == ShapeState.ready
                    and stored is not None
                    and now is not None
                    and stored.fingerprint == now.fingerprint
                )
                compiled = None
                if usable:
                    assert stored is not None
                    try:
                        compiled = CompiledShape(record.definition, stored)
                    except Exception:
                        usable = False
                if not usable:
                    fresh = await asyncio.to_thread(registry.rotate, record.handle)
                    self.rotations += 1
                    runtime = ShapeRuntime(
                        fresh, await asyncio.to_thread(ShapeLog.open, registry.log_dir(fresh.handle))
                    )
                    runtime.buffer = []
                else:
                    shape_log = await asyncio.to_thread(ShapeLog.open, directory)
                    runtime = ShapeRuntime(record, shape_log, compiled=compiled)
                    self.last_lsn = max(self.last_lsn, shape_log.last_offset.tx)
                self._add(runtime)
        log.info("recovered %d shapes", len(self._by_handle))

    def _current_tables(self, names: set[tuple[str, str]]) -> dict[tuple[str, str], TableInfo]:
        found: dict[tuple[str, str], TableInfo] = {}
        if not names:
            return found
        with psycopg.connect(self.config.dsn, autocommit=True, connect_timeout=10) as conn:
            for schema, table in names:
                info = load_table(conn, schema, table)
                if info is not None:
                    found[(schema, table)] = info
        return found

    # -- status --------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "shapes": len(self._by_handle),
            "transactions_processed": self.transactions_processed,
            "changes_processed": self.changes_processed,
            "last_lsn": self.last_lsn,
            "rotations": self.rotations,
            "slot_losses": self.slot_losses,
            "last_error": self.last_error,
            "time": time.time(),
        }


def _relation_signature(relation: RelationInfo) -> tuple[object, ...]:
    """What the stream says about a table that a shape's messages depend on (CompiledShape.stream_signature)."""
    columns = tuple((c.name, c.type_oid, c.type_modifier) for c in relation.columns)
    return (relation.oid, columns, relation.primary_key)


def _same_table(runtime: ShapeRuntime, relation: RelationInfo, signature: tuple[object, ...] | None = None) -> bool:
    """Whether the stream's description of the table is the one the shape was built from. The stream only
    reports a schema change relative to what it saw on its own connection, so a change made before the
    table's first write on this connection (or while the engine was down) is caught here. `signature`: the
    relation's `_relation_signature`, when the caller checks many shapes against it."""
    if runtime.checked_relation is relation:
        return True
    assert runtime.compiled is not None
    if signature is None:
        signature = _relation_signature(relation)
    if signature != runtime.compiled.stream_signature:
        log.info("table %s.%s changed under shape %s", relation.schema, relation.table, runtime.handle)
        return False
    runtime.checked_relation = relation
    return True


def _write_table_file(directory: Path, table: TableInfo) -> None:
    path = directory / TABLE_FILE
    temporary = directory / (TABLE_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(table.to_json()).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_directory(directory)


def _read_table_file(directory: Path) -> TableInfo | None:
    try:
        return TableInfo.from_json(json.loads((directory / TABLE_FILE).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
