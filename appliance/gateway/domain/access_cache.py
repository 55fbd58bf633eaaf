"""What reads decide access on, remembered by each gateway process: a principal's memberships (house -> role),
which house a live thread is in, and which API keys are live. A read whose facts are remembered makes no round
trip to Postgres; writes keep checking inside their own transaction (`access.require`), as before.

Forgetting, so that nothing stale is ever allowed:
* Postgres announces every change to these facts on channel `access_changed` at commit (triggers of migration
  0012_access_notify.sql). The gateway's listening connection (core/listener.py) hears it (asyncpg delivers it
  to a listener callback when the event loop reads the connection's socket), and every lookup first looks whether
  anything is already waiting on that socket and, if so, lets the loop read it and run the callbacks before
  deciding, so a change committed before a request reaches this process is known when the request is decided, unless
  Postgres's own delivery of the notification (a signal to the listening backend, then a write to its socket,
  well under a millisecond on one host) is still under way.
* A change this process commits itself (a member removed through the API, a house deleted, claims that changed
  a person's roles at login) is forgotten before its answer is sent, without waiting for the notification.
* While the listening connection is not up (at start, or after Postgres restarted) nothing is remembered: every
  read asks Postgres, and whatever was remembered is dropped when the connection goes.
* A lookup's answer is only kept if no notification arrived while it was being fetched (a generation count), and
  every entry expires after `gateway.access_cache_ttl_s` regardless (a backstop, not the mechanism).
Only facts that grant something are remembered: "no such thread" and "no such key" are asked every time, so an
insert never needs announcing.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

from appliance.gateway.core.db import Database
from appliance.gateway.core.listener import Follower, Listener

log = logging.getLogger("appliance.gateway")

CHANNEL: Final = "access_changed"
# True inside a transaction whose changes those triggers announce (migration 0013): read just before its commit.
CHANGED_HERE_SQL: Final = "SELECT coalesce(current_setting('appliance.access_changed', true) = 'on', false)"
# Entries per kind; the least recently used go first. A principal's memberships are a few dozen bytes.
MAX_ENTRIES: Final = 50_000

ROLES_SQL: Final = (
    "SELECT m.house_id, m.role FROM public.members m "
    "JOIN public.houses h ON h.id = m.house_id AND h.deleted_at IS NULL "
    "WHERE m.principal_id = $1 AND m.deleted_at IS NULL"
)
THREAD_SQL: Final = (
    "SELECT t.house_id FROM public.threads t JOIN public.houses h ON h.id = t.house_id AND h.deleted_at IS NULL "
    "WHERE t.id = $1 AND t.deleted_at IS NULL"
)
# Expiry is decided at each use (it passes without a change to announce); revocation is what is announced.
API_KEY_SQL: Final = "SELECT principal_id, expires_at FROM public.api_keys WHERE id = $1 AND deleted_at IS NULL"

K = TypeVar("K")
V = TypeVar("V")


class _Entries(Generic[K, V]):
    """A bounded map whose entries expire: (value, deadline), least recently used evicted first."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (value, time.monotonic() + self._ttl_s)
        self._entries.move_to_end(key)
        if len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class ApiKey:
    principal_id: uuid.UUID
    expires_at: datetime | None

    def live_for(self, principal_id: uuid.UUID) -> bool:
        return self.principal_id == principal_id and (self.expires_at is None or self.expires_at > datetime.now(UTC))


class AccessCache:
    def __init__(self, db: Database, listener: Listener, ttl_s: float) -> None:
        self._db = db
        self._listener = listener
        self.enabled = ttl_s > 0
        self._roles: _Entries[uuid.UUID, dict[uuid.UUID, str]] = _Entries(ttl_s)
        self._threads: _Entries[uuid.UUID, uuid.UUID] = _Entries(ttl_s)
        self._keys: _Entries[uuid.UUID, ApiKey] = _Entries(ttl_s)
        self._generation = 0
        self._asked = 0  # lookups that went to Postgres (for tests and diagnostics)
        self._listening = False  # the listener is up and this cache has been emptied since it came up
        if self.enabled:
            listener.follow(Follower((CHANNEL,), self._heard, self._up, self._down))

    # -- lookups ------------------------------------------------------------------------------------------------

    async def roles(self, principal_id: uuid.UUID) -> dict[uuid.UUID, str]:
        """The principal's live memberships of live houses: house id -> role."""
        remembered = await self._remembered(self._roles, principal_id)
        if remembered is not None:
            return remembered
        generation = self._asking()
        rows = await self._db.fetchall(ROLES_SQL, principal_id)
        found = {row["house_id"]: row["role"] for row in rows}
        self._keep(self._roles, principal_id, found, generation)
        return found

    async def thread_house(self, thread_id: uuid.UUID) -> uuid.UUID | None:
        """The house of a live thread in a live house, or None."""
        house_id: uuid.UUID | None = await self._one(self._threads, thread_id, THREAD_SQL, lambda row: row["house_id"])
        return house_id

    async def api_key(self, key_id: uuid.UUID) -> ApiKey | None:
        """A live (not revoked) API key; whether it has expired is the caller's to check (`live_for`)."""
        return await self._one(self._keys, key_id, API_KEY_SQL, lambda row: ApiKey(row["principal_id"],
                                                                                  row["expires_at"]))

    async def _one(self, entries: _Entries[K, V], key: K, query: str, build: Callable[[Any], V]) -> V | None:
        """What `entries` remembers of `key`, or the row `query` finds for it (remembered), or None (not)."""
        remembered = await self._remembered(entries, key)
        if remembered is not None:
            return remembered
        generation = self._asking()
        row = await self._db.fetchrow(query, key)
        if row is None:
            return None
        value = build(row)
        self._keep(entries, key, value, generation)
        return value

    async def _remembered(self, entries: _Entries[K, V], key: K) -> V | None:
        if not self._listening:
            return None
        await self._listener.take_pending()
        return entries.get(key) if self._listening else None

    def _asking(self) -> int:
        """Count a lookup that goes to Postgres; the generation it starts in."""
        self._asked += 1
        return self._generation

    def _keep(self, entries: _Entries[K, V], key: K, value: V, generation: int) -> None:
        # A notification that arrived while the value was fetched may be about it: then it may be stale already.
        if self._listening and generation == self._generation:
            entries.put(key, value)

    # -- forgetting ---------------------------------------------------------------------------------------------

    def forget_all(self) -> None:
        self._generation += 1
        self._roles.clear()
        self._threads.clear()
        self._keys.clear()

    def forget_principal(self, principal_id: uuid.UUID) -> None:
        self._generation += 1
        self._roles.forget(principal_id)

    def _changed(self, payload: str) -> None:
        kind, _, ident = payload.partition(":")
        try:
            key = uuid.UUID(ident) if ident else None
        except ValueError:
            key = None
        if kind == "p" and key is not None:
            self.forget_principal(key)
        elif kind == "t" and key is not None:
            self._generation += 1
            self._threads.forget(key)
        elif kind == "k" and key is not None:
            self._generation += 1
            self._keys.forget(key)
        else:
            self.forget_all()

    def _heard(self, _channel: str, payload: str) -> None:
        self._changed(payload)

    def _up(self) -> None:
        self.forget_all()
        self._listening = True

    def _down(self, why: str) -> None:
        """The listener is gone: from now until it is back, nothing is remembered."""
        self._listening = False
        self.forget_all()
        log.warning("access cache off until Postgres can be listened to again: %s", why)

    def stats(self) -> dict[str, Any]:
        return {"listening": self._listening, "principals": len(self._roles),
                "threads": len(self._threads), "api_keys": len(self._keys), "asked": self._asked}

