"""How uvicorn serves the gateway: its HTTP protocol with TCP_NODELAY on every client connection.

asyncio sets TCP_NODELAY on accepted connections only when the listening socket says it is TCP (proto 6); with
several workers uvicorn shares a socket made without a proto, so the option is skipped and Nagle's algorithm
holds back the second write of every response (headers, then body) until the client's delayed ACK: about 40 ms
per request. Setting it ourselves on each connection makes the worker count irrelevant to latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.auto import AutoHTTPProtocol


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[valid-type, misc]
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
