"""How uvicorn serves the gateway: its HTTP protocol with TCP_NODELAY on every client connection, and its two
listeners (loopback TCP, and the front door's unix socket).

asyncio sets TCP_NODELAY on accepted connections only when the listening socket says it is TCP (proto 6); with
several workers uvicorn shares a socket made without a proto, so the option is skipped and Nagle's algorithm
holds back the second write of every response (headers, then body) until the client's delayed ACK: about 40 ms
per request. Setting it ourselves on each connection makes the worker count irrelevant to latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import socket
import struct
import sys
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from appliance.config import FRONTDOOR_USER
from appliance.gateway.core.middleware import FRONT_DOOR_PEER


@functools.cache
def _front_door_uid() -> int | None:
    try:
        return pwd.getpwnam(FRONTDOOR_USER).pw_uid
    except KeyError:
        return None


def _peer_uid(sock: socket.socket) -> int | None:
    with contextlib.suppress(OSError):
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
        return int(uid)
    return None


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        if sock is not None and sock.family == socket.AF_UNIX:
            uid = _peer_uid(sock)
            self.client = FRONT_DOOR_PEER if uid is not None and uid == _front_door_uid() else None


def front_door_socket(path: Path, backlog: int) -> socket.socket | None:
    """The gateway's listening socket for the front door, in the directory the deploy made for it (the gateway's
    user and the front door's group only; setgid, so the socket is the front door group's). None when the
    front door is not deployed for this tenant (no such directory): the gateway then serves loopback only."""
    if not path.parent.is_dir():
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a gateway that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve(config: uvicorn.Config, extra_sockets: list[socket.socket]) -> None:
    """uvicorn.run, on the configured TCP port and `extra_sockets` too, with the same worker handling."""
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config=config)
    sockets = [config.bind_socket(), *extra_sockets]
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            config.load_app()
            server.run(sockets=sockets)
    finally:
        for sock in extra_sockets:
            if sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(sock.getsockname())
    if config.workers == 1 and not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE
