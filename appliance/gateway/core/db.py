"""A small asyncio connection pool for the gateway's role (psycopg 3 async connections, autocommit).

Small on purpose: the gateway needs a bounded set of connections that are checked when handed out and replaced
when broken; the password is read from the tenant's secret file at each connect, so a rotated password is
picked up without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row


class Database:
    def __init__(self, conninfo: dict[str, Any], password: Callable[[], str], size: int,
                 connect_timeout: float = 5) -> None:
        self._conninfo = conninfo
        self._password = password
        self._size = size
        self._connect_timeout = connect_timeout
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            **self._conninfo, password=self._password(), autocommit=True,
            connect_timeout=max(1, int(self._connect_timeout)), application_name="appliance-gateway",
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for the duration of the block (autocommit; open `conn.transaction()` for writes)."""
        if self._closed:
            raise psycopg.OperationalError("the gateway is shutting down")
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is not None and (conn.closed or conn.broken):
                conn = None
            if conn is None:
                conn = await self._connect()
            try:
                yield conn
            finally:
                # Reused after an error too (a refused write is common and a new connection costs a SCRAM
                # handshake), but only when it is idle outside any transaction; users that hold session state
                # (the entries' advisory locks) release it or close the connection themselves.
                reusable = (not self._closed and not conn.closed and not conn.broken
                            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
                if reusable:
                    self._idle.append(conn)
                else:
                    await conn.close()

    async def dedicated(self) -> psycopg.AsyncConnection[Any]:
        """A connection of its own, outside the pool (a LISTEN), closed by the caller."""
        return await self._connect()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetchrow(self, query: str, params: Any = None) -> dict[str, Any] | None:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)  # type: ignore[arg-type]
            return await cur.fetchone()

    async def fetchall(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        async with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
