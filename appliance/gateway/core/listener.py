"""The gateway's one listening connection: every NOTIFY channel it follows, on one dedicated Postgres connection.

Two parts of the gateway follow channels: the access cache (`access_changed`) and the identity-event mover
(`identity_events`, `identity_keys`). A connection of its own for each was a Postgres backend each (~17 MB RSS
while idle), so they share this one. It is made when the gateway starts and made again whenever it ends (backing
off up to RECONNECT_MAX_S). Each follower is told:
* `heard(channel, payload)` for a notification on one of its channels (asyncpg calls it from the event loop when
  it reads the connection's socket);
* `up()` once the connection listens to every channel: what was committed before may not have been heard;
* `down(why)` as soon as the connection is known to be gone, before it is made again.
`take_pending()` lets a caller have what is already waiting on the socket heard before it decides (the access
cache does, before every lookup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from appliance.gateway.core.db import GatewayConnection

log = logging.getLogger("appliance.gateway")

RECONNECT_MAX_S: Final = 5.0
# Loop turns `take_pending` gives asyncpg to read what is waiting on the socket (one suffices unless a burst of
# notifications arrives in pieces); past that the caller goes on with what is known.
MAX_TURNS: Final = 20
_GONE: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL


@dataclass(frozen=True)
class Follower:
    channels: tuple[str, ...]
    heard: Callable[[str, str], None]
    up: Callable[[], None]
    down: Callable[[str], None]


class Listener:
    def __init__(self, connect: Callable[[], Awaitable[GatewayConnection]]) -> None:
        self._connect = connect
        self._followers: list[Follower] = []
        self._connection: GatewayConnection | None = None
        self._socket: select.poll | None = None  # the connection's socket, to look at without reading it
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    def follow(self, follower: Follower) -> None:
        """Add a follower (before `start`)."""
        if self._task is not None:
            raise RuntimeError("followers are added before the listener starts")
        self._followers.append(follower)

    @property
    def listening(self) -> bool:
        return self._connection is not None

    def start(self) -> None:
        """Listen from now on (nothing to do, and no connection, when nobody follows a channel)."""
        if self._followers and self._task is None:
            self._task = asyncio.create_task(self._keep_listening(), name="listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def take_pending(self) -> None:
        """Everything already on the socket, heard before the caller decides.

        asyncpg reads the socket when the event loop finds it readable and hands each notification to `_heard`
        through the loop's ready queue. So: if the socket has data waiting (a zero-timeout poll, no read), give
        the loop turns until it has been read, then one more, which runs after the callbacks that read queued."""
        socket = self._socket
        if socket is None:
            return
        turns = 0
        while (events := socket.poll(0)) and turns < MAX_TURNS:
            if any(revents & _GONE for _, revents in events):
                self._drop("connection closed")
                return
            await asyncio.sleep(0)
            turns += 1
        if turns:
            await asyncio.sleep(0)

    def _heard(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for follower in self._followers:
            if channel in follower.channels:
                follower.heard(channel, payload)

    def _terminated(self, conn: object) -> None:
        if conn is self._connection:  # not an earlier connection whose end is reported late
            self._drop("connection closed")

    def _drop(self, why: str) -> None:
        connection, self._connection = self._connection, None
        self._socket = None
        if connection is not None:
            for follower in self._followers:
                follower.down(why)
        self._lost.set()

    async def _keep_listening(self) -> None:
        delay = 0.2
        channels = list(dict.fromkeys(channel for follower in self._followers for channel in follower.channels))
        while True:
            connection: GatewayConnection | None = None
            try:
                connection = await self._connect()
                watched = select.poll()
                watched.register(_socket_of(connection), select.POLLIN)
                for channel in channels:
                    await connection.add_listener(channel, self._heard)
                connection.add_termination_listener(self._terminated)
                self._lost.clear()
                self._connection, self._socket = connection, watched
                for follower in self._followers:
                    follower.up()
                delay = 0.2
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("not listening to Postgres yet: %s", type(exc).__name__)
            finally:
                if self._connection is connection and connection is not None:
                    self._drop("stopped")
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


def _socket_of(conn: GatewayConnection) -> int:
    """The file descriptor of the connection's socket (asyncpg keeps its transport; there is no public accessor)."""
    sock = conn._transport.get_extra_info("socket")
    if sock is None:
        raise RuntimeError("the listening connection has no socket")
    return int(sock.fileno())
