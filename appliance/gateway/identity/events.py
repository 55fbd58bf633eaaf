"""What the embedded provider did (logins, failures, lockouts, device approvals, passwords set), moved from its
outbox `identity.events` into the tenant's hash-chained audit trail.

The provider writes an event in the same transaction as the change it records; the gateway appends it to the
chain and deletes it from the outbox in one transaction, so each lands in the trail exactly once. Woken by
NOTIFY `identity_events` (a trigger of the outbox) on the gateway's listening connection (core/listener.py),
with a periodic sweep in case a notification is missed (the listening connection was being re-made). With
several gateway workers one moves them at a time (a transaction-scoped advisory lock; the others find it taken
and leave the rows to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from appliance.audit.canonical import format_timestamp
from appliance.audit.chain import AuditEvent, append_events_async
from appliance.gateway.core.db import Database
from appliance.gateway.core.listener import Follower, Listener

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


def follow(listener: Listener, keys_rotated: Callable[[], None]) -> asyncio.Event:
    """Follow the provider's channels on the gateway's listener; the event is set by each notification and
    whenever the listener (re)connects (what was notified meanwhile was not heard). `keys_rotated` is told at
    once when the provider's keys change."""
    wakeup = asyncio.Event()

    def heard(channel: str, _payload: str) -> None:
        if channel == KEYS_CHANNEL:
            keys_rotated()
        wakeup.set()

    listener.follow(Follower((CHANNEL, KEYS_CHANNEL), heard, wakeup.set, lambda _why: None))
    return wakeup


async def run(db: Database, wakeup: asyncio.Event) -> None:
    """Forever: move events when woken (see `follow`), and every SWEEP_S seconds regardless."""
    while True:
        try:
            await move_events(db)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("identity events not moved to the audit trail yet: %s", type(exc).__name__)
        # Any notification (or none within the sweep) means: look at the outbox again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), SWEEP_S)
        wakeup.clear()
