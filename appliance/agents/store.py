"""Each agent's own persistent state: one SQLite file per agent in the tenant's agents dir.

    <agents dir>/agent-<agent id>.sqlite3
      meta   the agent as last activated (its row and the house configs it got), newest `updated_at` wins
      inbox  one row per triggering entry: the dedup record of handled entry ids and the worker's durable queue
             pending  -> accepted (the gateway got its 2xx), the handler has not produced a reply yet
             prepared -> the reply (or error entry) is decided and stored, with the handler's state changes;
                         it may or may not be in the stream yet
             done     -> the reply is in the stream (or could never be: the thread's stream is gone)
      kv     free key-value state for the agent's handler (JSON values)

Only one worker process per tenant opens these files (it holds `worker.lock`), so the per-file lock here only
orders that process's threads. Two kinds of commits:
- durable (synchronous=FULL, fsync before returning): accepting an activation (the 2xx sent to the gateway is
  final, so it must survive a crash of the machine) and preparing a reply with state changes (it must be on disk
  before the reply is appended, or a power loss could keep the reply and lose the state that goes with it);
- quick (synchronous=NORMAL: in WAL mode it survives the process being killed, and may lose the last commits
  if the machine loses power): counting a run, finishing a row, postponing one. Losing those is harmless: the
  row is run again, and the reply is then found in the stream instead of being appended twice.
Quick commits and reads are cheap enough to run on the event loop; durable ones go to a thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

SCHEMA_VERSION: Final = 1
MAX_KEY_CHARS: Final = 200
MAX_VALUE_BYTES: Final = 1 << 20
# Handled entry ids are kept this long. Past that a redelivery is still answered once: the worker then finds the
# reply in the stream by its derived id before running anything.
DEDUP_RETENTION_S: Final = 30 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_id     TEXT NOT NULL UNIQUE,
    thread_id    TEXT NOT NULL,
    activation   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'prepared', 'done')),
    reply        TEXT,
    outcome      TEXT,
    next_offset  TEXT,
    runs         INTEGER NOT NULL DEFAULT 0,
    deliveries   INTEGER NOT NULL DEFAULT 1,
    retry_at     REAL NOT NULL DEFAULT 0,
    accepted_at  REAL NOT NULL,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS inbox_open ON inbox (seq) WHERE state != 'done';
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
"""

_DELETED: Final = object()


def store_path(agents_dir: Path, agent_id: uuid.UUID) -> Path:
    # A canonical UUID is the only thing in the name, so no agent id can point outside the dir.
    return agents_dir / f"agent-{uuid.UUID(str(agent_id))}.sqlite3"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class InboxRow:
    entry_id: str
    thread_id: str
    activation: dict[str, Any]
    state: str
    reply: dict[str, Any] | None
    outcome: str | None
    next_offset: str | None
    runs: int
    deliveries: int


_SELECT_ROW: Final = (
    "SELECT entry_id, thread_id, activation, state, reply, outcome, next_offset, runs, deliveries FROM inbox"
)


def _inbox_row(row: tuple[Any, ...]) -> InboxRow:
    return InboxRow(row[0], row[1], json.loads(row[2]), row[3], json.loads(row[4]) if row[4] else None,
                    row[5], row[6], int(row[7]), int(row[8]))


class QueueFull(Exception):
    """The agent has as many unfinished activations as it may queue."""


@dataclass(frozen=True)
class Accepted:
    fresh: bool  # False: this entry id was already accepted (a duplicate delivery)
    state: str
    outcome: str | None


def _newer(candidate: str, stored: str) -> bool:
    """Whether `candidate` (an ISO timestamp) is at least as new as `stored`; unparsable ones count as newer."""
    try:
        return datetime.fromisoformat(candidate) >= datetime.fromisoformat(stored)
    except ValueError:
        return True


class AgentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            # Created 0660 before SQLite opens it (its -wal and -shm files inherit the mode); the umask and the
            # agents dir's group decide who else: the tenant's user, for backups (appliance.host.users).
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o660))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync = ""
        self._set_sync("FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _set_sync(self, mode: str) -> None:
        # Called with the lock held (or before the store is shared), between transactions.
        if mode != self._sync:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

    def _tx(self, durable: bool = True) -> _Transaction:
        return _Transaction(self, "FULL" if durable else "NORMAL")

    # The agent as last activated (read back by claim) ----------------------------------------------------
    def _remember(self, agent: dict[str, Any], configs: dict[str, Any]) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'agent'").fetchone()
        if row is not None and not _newer(str(agent.get("updated_at", "")),
                                          str(json.loads(row[0]).get("updated_at", ""))):
            return  # an older activation delivered late: keep the fresher config
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [("agent", dumps(agent)), ("configs", dumps(configs))])

    # The inbox ------------------------------------------------------------------------------------------------
    def accept(self, entry_id: str, thread_id: str, activation: dict[str, Any], max_open: int) -> Accepted:
        """Record an activation (durably) unless its entry id is known; either way remember the agent's config.
        Raises QueueFull, recording nothing, when `max_open` activations are already unfinished."""
        with self._tx():
            row = self._db.execute("SELECT state, outcome FROM inbox WHERE entry_id = ?", (entry_id,)).fetchone()
            if row is not None:
                self._remember(activation["agent"], activation.get("configs") or {})
                self._db.execute("UPDATE inbox SET deliveries = deliveries + 1 WHERE entry_id = ?", (entry_id,))
                return Accepted(False, row[0], row[1])
            if self._db.execute("SELECT count(*) FROM inbox WHERE state != 'done'").fetchone()[0] >= max_open:
                raise QueueFull
            self._remember(activation["agent"], activation.get("configs") or {})
            self._db.execute(
                "INSERT INTO inbox (entry_id, thread_id, activation, state, accepted_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                (entry_id, thread_id, dumps(activation), time.time()),
            )
        return Accepted(True, "pending", None)

    def due(self, exclude: set[str], limit: int) -> tuple[list[InboxRow], float | None]:
        """Unfinished activations due now, oldest first, except those in `exclude` (already running); and when
        the earliest postponed one becomes due (None: none is postponed)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                f"{_SELECT_ROW} WHERE state != 'done' AND retry_at <= ? ORDER BY seq LIMIT ?",
                (now, limit + len(exclude)),
            ).fetchall() if limit > 0 else []
            later = self._db.execute("SELECT min(retry_at) FROM inbox WHERE state != 'done' AND retry_at > ?",
                                     (now,)).fetchone()
        due = [_inbox_row(row) for row in rows if row[0] not in exclude][:limit]
        return due, (float(later[0]) if later and later[0] is not None else None)

    def count_open(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM inbox WHERE state != 'done'").fetchone()[0])

    def row(self, entry_id: str) -> InboxRow | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT_ROW} WHERE entry_id = ?", (entry_id,)).fetchone()
        return None if row is None else _inbox_row(row)

    def claim(self, entry_id: str) -> tuple[int, dict[str, Any] | None, dict[str, Any]]:
        """Count a handler run before it starts (so an entry that takes the worker down every time is noticed);
        returns the runs so far, this one included, and the agent as last activated (row, house configs)."""
        with self._tx(durable=False):
            self._db.execute("UPDATE inbox SET runs = runs + 1 WHERE entry_id = ?", (entry_id,))
            runs = self._db.execute("SELECT runs FROM inbox WHERE entry_id = ?", (entry_id,)).fetchone()
            meta = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('agent', 'configs')"))
        agent = json.loads(meta["agent"]) if "agent" in meta else None
        return (int(runs[0]) if runs else 0), agent, json.loads(meta.get("configs", "{}"))

    def uncount_run(self, entry_id: str) -> None:
        """A run stopped by a shutdown, not by its handler: it does not count."""
        with self._tx(durable=False):
            self._db.execute("UPDATE inbox SET runs = max(0, runs - 1) WHERE entry_id = ?", (entry_id,))

    def prepare(self, entry_id: str, reply: dict[str, Any], changes: Mapping[str, Any]) -> None:
        """Store the decided reply and the handler's state changes in one transaction (both or neither)."""
        with self._tx():
            now = time.time()
            for key, value in changes.items():
                if value is _DELETED:
                    self._db.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    self._db.execute("INSERT OR REPLACE INTO kv (key, value, updated_at) VALUES (?, ?, ?)",
                                     (key, value, now))
            self._db.execute(
                "UPDATE inbox SET state = 'prepared', reply = ? WHERE entry_id = ? AND state = 'pending'",
                (dumps(reply), entry_id),
            )

    def finish(self, entry_id: str, outcome: str, next_offset: str | None) -> None:
        with self._tx(durable=False):
            self._db.execute(
                "UPDATE inbox SET state = 'done', outcome = ?, next_offset = ?, finished_at = ?, retry_at = 0 "
                "WHERE entry_id = ?",
                (outcome, next_offset, time.time(), entry_id),
            )

    def retry_later(self, entry_id: str, at: float) -> None:
        with self._tx(durable=False):
            self._db.execute("UPDATE inbox SET retry_at = ? WHERE entry_id = ? AND state != 'done'", (at, entry_id))

    def prune(self, older_than_s: float = DEDUP_RETENTION_S) -> int:
        with self._tx(durable=False):
            cur = self._db.execute("DELETE FROM inbox WHERE state = 'done' AND finished_at < ?",
                                   (time.time() - older_than_s,))
        return cur.rowcount

    # Handler state --------------------------------------------------------------------------------------------
    def kv_get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def kv_keys(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT key FROM kv ORDER BY key")]


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT under the store's lock; rolled back if the block raises."""

    def __init__(self, store: AgentStore, sync: str) -> None:
        self.store = store
        self.db = store._db
        self.lock = store._lock
        self.sync = sync

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            self.store._set_sync(self.sync)
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


class AgentState:
    """The handler's view of its agent's key-value state.

    Reads see the committed state plus this activation's own changes; changes are committed together with the
    reply, so a handler that dies (or times out) before replying leaves no half-done state behind, and a handler
    run again after a crash starts from the same state as the first time."""

    def __init__(self, store: AgentStore) -> None:
        self._store = store
        self._changes: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._changes:
            staged = self._changes[key]
            return default if staged is _DELETED else json.loads(staged)
        raw = self._store.kv_get(key)
        return default if raw is None else json.loads(raw)

    def set(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
            raise ValueError(f"state keys are strings of 1 to {MAX_KEY_CHARS} characters")
        encoded = dumps(value)  # raises for values JSON cannot hold
        if len(encoded.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"state values are at most {MAX_VALUE_BYTES} bytes of JSON")
        self._changes[key] = encoded

    def delete(self, key: str) -> None:
        self._changes[key] = _DELETED

    def keys(self) -> Iterator[str]:
        committed = set(self._store.kv_keys())
        for key, value in self._changes.items():
            if value is _DELETED:
                committed.discard(key)
            else:
                committed.add(key)
        return iter(sorted(committed))

    @property
    def changes(self) -> Mapping[str, Any]:
        return self._changes

    def discard(self) -> None:
        """Forget this activation's changes (its handler failed: nothing of it is kept)."""
        self._changes.clear()
