"""The gateway's connections to the tenant's Postgres: an asyncpg pool for its role, sized per worker.

Why asyncpg here and psycopg elsewhere: the gateway runs a handful of fixed statements on every request, where
psycopg's Python-level query conversion and parameter dumping were a large share of its CPU; asyncpg prepares
each statement once per connection (its statement cache) and encodes parameters in C, in the binary format.
Replication, the CLI, migrations and the sync audit chain stay on psycopg (one connection helper each), where
libpq's features (COPY, replication protocol, `%s` composition) serve better and CPU per statement does not
matter.

What stays as it was with the psycopg pool: a connection is checked when handed back, and one left inside a
transaction (or holding anything a rollback would not undo) is closed, never reused; the password is read from
the tenant's secret file at each new connection, so a rotated password is picked up without a restart; every
connection says `application_name = appliance-gateway`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import asyncpg

APPLICATION_NAME: Final = "appliance-gateway"
# Distinct statements the gateway runs (fixed texts, the CRUD ones per table and column set) stay well under this.
STATEMENT_CACHE_SIZE: Final = 256
# How often the pool is trimmed to what the last such period needed at once (at least one connection).
IDLE_CONNECTION_S: Final = 60.0

Record = asyncpg.Record


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached (or the gateway is shutting down): answered 503, retried by the client."""


class GatewayConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection that remembers what it learned about the database once (set by `_init`)."""

    # Whether the database has audit.append_event (migration 0006), asked once per connection: one opened before
    # a deploy migrated its database keeps appending the older way (appliance/audit/chain.py).
    audit_append_one: bool | None = None
    # Whether it has appliance.try_record_entry_after (migration 0014): without it, entry groups keep finishing on
    # their own (appliance/gateway/domain/entry_groups.py).
    record_after_finish: bool | None = None
    # Whether it has appliance.record_entry_flat (migration 0015): the same record in one function call instead of
    # the older nested ones (appliance/gateway/domain/entry_groups.py).
    record_flat: bool | None = None


Connection = GatewayConnection | asyncpg.pool.PoolConnectionProxy


def _dump_jsonb(value: Any) -> bytes:
    # jsonb's binary format is a version byte and the text.
    return b"\x01" + json.dumps(value).encode()


def _load_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init(conn: GatewayConnection) -> None:
    """Once per new connection: JSON codecs (Python values in and out, as psycopg's Jsonb and loaders gave) and
    what the audit chain needs to know."""
    await conn.set_type_codec("jsonb", schema="pg_catalog", format="binary", encoder=_dump_jsonb,
                              decoder=_load_jsonb)
    await conn.set_type_codec("json", schema="pg_catalog", format="text", encoder=json.dumps, decoder=json.loads)
    found = await conn.fetchrow(
        "SELECT to_regprocedure('audit.append_event(text,text,uuid,text,jsonb,text,text)') IS NOT NULL, "
        "to_regprocedure('appliance.try_record_entry_after(boolean,uuid[],text[],bigint,uuid,uuid,uuid,jsonb,text,"
        "text[],text[],text,text,jsonb,text[],text)') IS NOT NULL, "
        "to_regprocedure('appliance.record_entry_flat(boolean,boolean,uuid[],text[],bigint,uuid,uuid,uuid,jsonb,text,"
        "text[],text[],text,text,jsonb,text[],text)') IS NOT NULL")
    conn.audit_append_one, conn.record_after_finish = bool(found[0]), bool(found[1])
    conn.record_flat = bool(found[2])


async def _keep_as_is(conn: GatewayConnection) -> None:
    """The pool's reset when a connection is handed back: nothing to send. asyncpg's default runs
    `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` (a round trip per request); the gateway never
    leaves session state behind on a connection it hands back (`Database.connection` closes one inside a
    transaction; the entries' lock holders release their locks or close the connection)."""
    del conn


# Failures of the connection itself (not of a statement): the database is away, restarting, or refused us.
_UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.InvalidAuthorizationSpecificationError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError)


# What a background task that talks to Postgres expects to meet and retry: a statement refused, the connection
# lost (asyncpg's InterfaceError), or no connection to be had.
DATABASE_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable, OSError)


def affected(status: str) -> int:
    """Rows a command touched, from its status ("UPDATE 3", "INSERT 0 1"): psycopg's `rowcount`."""
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0


def _released(conn: Connection) -> bool:
    """Whether a pool's connection has been handed back already (asyncpg does so itself when it closes)."""
    return isinstance(conn, asyncpg.pool.PoolConnectionProxy) and conn._con is None


class Database:
    def __init__(self, conninfo: dict[str, Any], password: Callable[[], str], size: int,
                 connect_timeout: float = 5, idle_s: float = IDLE_CONNECTION_S) -> None:
        self._connect_args: dict[str, Any] = {
            "host": conninfo["host"], "port": conninfo["port"], "user": conninfo["user"],
            "database": conninfo["dbname"],
            # A callable: asyncpg calls it at every connect, so a rotated password is used from then on.
            "password": password,
            "timeout": connect_timeout,
            # The tenant's cluster is on loopback and serves plain connections. Without this asyncpg "prefers"
            # TLS: an SSLRequest round trip per connect, and a look for a client certificate in $HOME/.postgresql
            # (which failed with EACCES while supervisord still gave services root's HOME).
            "ssl": False,
            "server_settings": {"application_name": APPLICATION_NAME},
            "statement_cache_size": STATEMENT_CACHE_SIZE,
            "connection_class": GatewayConnection,
        }
        self._size = size
        self._idle_s = idle_s
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        # Connections lent now, and the most lent at once since the trimmer last looked: what to keep open.
        self._lent = 0
        self._peak = 0
        self._background_turn = asyncio.Lock()
        self._trimmer: asyncio.Task[None] | None = None

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                # Opened at the first request, not at start (the gateway starts while Postgres may still be
                # starting). One connection stays for good (a new one costs a SCRAM handshake); those a burst
                # opened beyond what a whole IDLE_CONNECTION_S then needed at once are closed (`_trim_idle`):
                # each is a Postgres backend of ~16-20 MB RSS, and an idle tenant kept six of them. Not asyncpg's
                # max_inactive_connection_lifetime: that arms a timer at every release and cancels it at every
                # acquire, on the hot path.
                self._pool = await asyncpg.create_pool(
                    min_size=1, max_size=self._size, max_inactive_connection_lifetime=0, init=_init,
                    reset=_keep_as_is, **self._connect_args)
                self._trimmer = asyncio.get_running_loop().create_task(self._trim_idle())
            return self._pool

    async def _trim_idle(self) -> None:
        """Every IDLE_CONNECTION_S: close the idle connections beyond the most that were lent at once since the
        last look (at least one stays). Not "none was asked for": the gateway's own sweeps ask for one every few
        seconds, and so kept a burst's connections open for good."""
        while not self._closed:
            await asyncio.sleep(self._idle_s)
            pool = self._pool
            if pool is None or self._closed:
                return
            keep, self._peak = max(1, self._peak), self._lent
            surplus = min(pool.get_idle_size(), pool.get_size() - keep)
            if surplus <= 0:
                continue
            extra: list[Connection] = []
            try:
                for _ in range(surplus):  # idle ones: acquire() hands those out first, without waiting
                    extra.append(await pool.acquire())
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pass  # a pool closing, a connection that failed meanwhile: the next period looks again
            finally:
                for conn in extra:
                    conn.terminate()
                    await pool.release(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for the duration of the block (autocommit; open `conn.transaction()` for writes)."""
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    @asynccontextmanager
    async def background(self) -> AsyncIterator[Connection]:
        """A pooled connection for the gateway's own periodic work (sweeps, polls, lease renewals), one such block
        at a time: when their periods meet they take turns instead of each opening a connection of its own, which
        the trimmer would then keep (an idle gateway needs one)."""
        async with self._background_turn, self.connection() as conn:
            yield conn

    async def acquire(self) -> Connection:
        """A pooled connection until `release` (for a holder that hands it on: an entry group's, see
        entry_groups.py); `connection()` otherwise."""
        if self._closed:
            raise DatabaseUnavailable("the gateway is shutting down")
        try:
            # Opening the pool connects its first connection: an unreachable database is found there too (and
            # the failed pool is dropped, so the next request tries again).
            pool = self._pool or await self._open()
            conn: Connection = await pool.acquire()
        except _UNREACHABLE as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        self._lent += 1
        self._peak = max(self._peak, self._lent)
        return conn

    async def release(self, conn: Connection) -> None:
        self._lent -= 1
        # A connection that closed (or was terminated) while lent has already gone back to the pool, which
        # replaces it; asyncpg then refuses every call on it.
        if not _released(conn):
            # Reused after an error too (a refused write is common and a new connection costs a SCRAM handshake),
            # but only when it is idle outside any transaction; users that hold session state (the entries'
            # advisory locks) release it or close the connection themselves.
            if not conn.is_closed() and (self._closed or conn.is_in_transaction()):
                conn.terminate()
            assert self._pool is not None
            await self._pool.release(conn)

    async def dedicated(self) -> GatewayConnection:
        """A connection of its own, outside the pool (a LISTEN), closed by the caller."""
        try:
            conn: GatewayConnection = await asyncpg.connect(**self._connect_args)
        except _UNREACHABLE as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc
        try:
            await _init(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchall(self, query: str, *args: Any) -> list[Record]:
        async with self.connection() as conn:
            return await conn.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.connection() as conn:
            return await conn.execute(query, *args)

    async def close(self) -> None:
        self._closed = True
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self._pool is not None:
            try:
                # Waits for connections still lent (an entry group finishing); then cuts what is left.
                await asyncio.wait_for(self._pool.close(), 10)
            except TimeoutError:
                self._pool.terminate()
