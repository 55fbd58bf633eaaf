"""What the embedded provider did (logins, failures, lockouts, device approvals, passwords set), moved from its
outbox `identity.events` into the tenant's hash-chained audit trail.

The provider writes an event in the same transaction as the change it records; the gateway appends it to the
chain and deletes it from the outbox in one transaction, so each lands in the trail exactly once. Woken by
NOTIFY `identity_events` (a trigger of the outbox), with a periodic sweep in case a notification is missed
(the listening connection was being re-made). With several gateway workers one moves them at a time (a
transaction-scoped advisory lock; the others find it taken and leave the rows to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from appliance.audit.canonical import format_timestamp
from appliance.audit.chain import AuditEvent, append_events_async
from appliance.gateway.core.db import Database, GatewayConnection

log = logging.getLogger("appliance.gateway")

CHANNEL: Final = "identity_events"
# `appliance identity rotate-keys` notifies here once the provider publishes its new keys: the gateway then
# fetches them at the first token they signed, instead of waiting out its refetch limit.
KEYS_CHANNEL: Final = "identity_keys"
SWEEP_S: Final = 5.0
BATCH: Final = 500

# One mover at a time per database (arbitrary constant: "identity.events" as ASCII-ish digits).
MOVER_LOCK: Final = 0x6964656E74657673
_TAKE: Final = "SELECT id, at, actor, action, subject, detail FROM identity.events ORDER BY id LIMIT $1"


async def move_events(db: Database) -> int:
    """Append waiting provider events to the chain (and drop them from the outbox); how many moved."""
    moved = 0
    while True:
        async with db.background() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", MOVER_LOCK):
                return moved
            rows = await conn.fetch(_TAKE, BATCH)
            if not rows:
                return moved
            events = [
                AuditEvent(actor, action, None, subject, {**(detail or {}), "at": format_timestamp(at)})
                for _id, at, actor, action, subject, detail in rows
            ]
            await append_events_async(conn, events)
            await conn.execute("DELETE FROM identity.events WHERE id = ANY($1)", [r[0] for r in rows])
        moved += len(rows)
        if len(rows) < BATCH:
            return moved


class _Wakeup:
    """What one listening connection heard (asyncpg calls these from the event loop)."""

    def __init__(self, keys_rotated: Callable[[], None]) -> None:
        self.keys_rotated = keys_rotated
        self.notified = asyncio.Event()
        self.lost = False

    def heard(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        if channel == KEYS_CHANNEL:
            self.keys_rotated()
        self.notified.set()

    def ended(self, _conn: object) -> None:
        self.lost = True
        self.notified.set()


async def run(db: Database, connect: Callable[[], Awaitable[GatewayConnection]],
              keys_rotated: Callable[[], None]) -> None:
    """Forever: move events when notified, and every SWEEP_S seconds regardless; tell `keys_rotated` when the
    provider's keys change."""
    delay = 0.5
    while True:
        listener: GatewayConnection | None = None
        wakeup = _Wakeup(keys_rotated)
        try:
            listener = await connect()
            listener.add_termination_listener(wakeup.ended)
            await listener.add_listener(CHANNEL, wakeup.heard)
            await listener.add_listener(KEYS_CHANNEL, wakeup.heard)
            delay = 0.5
            await move_events(db)
            while True:
                # Any notification (or none within the sweep) means: look at the outbox.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.notified.wait(), SWEEP_S)
                wakeup.notified.clear()
                if wakeup.lost or listener.is_closed():
                    raise ConnectionError("the listening connection ended")
                await move_events(db)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("identity events not moved to the audit trail yet: %s", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            if listener is not None:
                listener.terminate()
