"""How the gateway writes audit events (appliance/audit/chain.py does the chaining).

* Mutations: the event is appended in the mutation's own transaction (`in_transaction`), so both commit or
  neither does.
* Refusals (a principal denied access to a house, a bad API key): appended synchronously in a transaction of
  their own before the error is answered (`now`).
* Grants of read access (a shape subscription, a thread stream read): queued and appended by a background task
  in batches, one transaction and one chain-head lock per batch (`soon`), so that reads do not serialise on the
  chain head. The request does not wait for the commit; the queue is bounded (a full queue makes requests
  wait), flushed at shutdown, and can lose at most the events of the last few milliseconds if the gateway is
  killed with SIGKILL.
* The same grant repeated (`granted`): a live client re-issues its long-poll every few seconds, each one the
  same caller reading the same thing with the same access. The first is recorded at once; identical ones within
  `gateway.read_grant_window_s` are counted, and the count is recorded (`detail.repeats`) with the next identical
  grant after the window, or by a sweep once the window has passed, or at shutdown. Any difference (another
  house set after a membership change, another live mode) is a new grant, recorded at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Hashable, Mapping
from typing import Any

from appliance.audit.canonical import canonical_json
from appliance.audit.chain import AuditEvent, append_events_async
from appliance.gateway.core.db import Connection, Database

log = logging.getLogger("appliance.gateway")

MAX_BATCH = 500
BATCH_LINGER_S = 0.01


def _detail_key(detail: Mapping[str, Any]) -> Hashable:
    """A key equal for equal details: its sorted items with their types (True == 1, but not in the record) when
    every value is hashable (a grant's detail is a few strings), else its canonical JSON. Only compared with
    other keys, never recorded."""
    items = tuple(sorted((name, type(value), value) for name, value in detail.items()))
    try:
        hash(items)
    except TypeError:
        return canonical_json(dict(detail)).decode()
    return items


@dataclasses.dataclass
class _Grant:
    event: AuditEvent
    recorded_at: float
    repeats: int = 0


class AuditLog:
    def __init__(self, db: Database, queue_size: int = 10_000, grant_window_s: float = 0.0) -> None:
        self.db = db
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._grant_window_s = grant_window_s
        self._grants: dict[tuple[Hashable, ...], _Grant] = {}

    async def in_transaction(self, conn: Connection, event: AuditEvent) -> None:
        """Append within `conn`'s open transaction; call it last, just before commit (it locks the chain head)."""
        await append_events_async(conn, [event])

    async def now(self, event: AuditEvent, conn: Connection | None = None) -> None:
        """Append in a transaction of its own; pass the caller's idle connection rather than take a second one
        from the pool (a request holding one connection while waiting for another could starve the pool)."""
        if conn is not None:
            await append_events_async(conn, [event])
            return
        async with self.db.connection() as own:
            await append_events_async(own, [event])

    async def soon(self, event: AuditEvent) -> None:
        # Refuse an event without a canonical form here, where the caller sees it, not in the writer's batch.
        canonical_json({"detail": dict(event.detail), "actor": event.actor, "subject": event.subject})
        self._idle.clear()
        await self._queue.put(event)

    async def granted(self, event: AuditEvent) -> None:
        """A read grant, coalesced with identical ones within the window (see the module's docstring)."""
        if self._grant_window_s <= 0:
            await self.soon(event)
            return
        key = (event.actor, event.action, str(event.house_id), event.subject or "", _detail_key(event.detail))
        now = time.monotonic()
        seen = self._grants.get(key)
        if seen is not None and now - seen.recorded_at < self._grant_window_s:
            seen.repeats += 1
            return
        repeats = seen.repeats if seen is not None else 0
        self._grants[key] = _Grant(event, now)
        await self.soon(_with_repeats(event, repeats) if repeats else event)

    async def _record_repeats(self, everything: bool) -> None:
        """Record the counts of grants whose window has passed (all of them when `everything`), and forget
        grants whose window has passed with nothing to add."""
        now = time.monotonic()
        for key, grant in list(self._grants.items()):
            if not everything and now - grant.recorded_at < self._grant_window_s:
                continue
            del self._grants[key]
            if grant.repeats:
                await self.soon(_with_repeats(grant.event, grant.repeats))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._grant_window_s)
            await self._record_repeats(everything=False)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        if self._grant_window_s > 0:
            self._sweeper = asyncio.create_task(self._sweep(), name="audit-grant-sweeper")

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            # Let a burst gather: one transaction (and one chain-head lock) for many reads.
            await asyncio.sleep(BATCH_LINGER_S)
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            if self._queue.empty():
                self._idle.set()

    async def _write(self, batch: list[AuditEvent]) -> None:
        delay = 0.1
        while True:
            try:
                async with self.db.connection() as conn:
                    await append_events_async(conn, batch)
                return
            except Exception as exc:
                # Postgres away (or restarting): keep the batch and retry; reads keep being served meanwhile.
                log.warning("audit batch of %d events not written yet: %s", len(batch), type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued event is committed."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self) -> None:
        if self._task is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._record_repeats(everything=True)
        try:
            await self.flush(timeout=10.0)
        except TimeoutError:
            log.error("audit queue not flushed at shutdown: %d events unwritten", self._queue.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _with_repeats(event: AuditEvent, repeats: int) -> AuditEvent:
    return dataclasses.replace(event, detail={**event.detail, "repeats": repeats})
