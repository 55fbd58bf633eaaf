"""The gateway's loopback HTTP client (appliance/gateway/upstream.py): what happens to a connection when its
request is given up half-way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.gateway.upstream import Upstream


def test_a_request_cancelled_before_its_answer_closes_its_connection() -> None:
    """Closed by the client at once, not left to the garbage collector (which closes it only once nothing
    refers to it, with an 'unclosed' warning), and never put back in the pool half-used."""

    async def scenario() -> None:
        ended: asyncio.Queue[bytes] = asyncio.Queue()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = b""
            while chunk := await reader.read(65536):  # reads the request, never answers
                received += chunk
            await ended.put(received)  # EOF: the client closed its end
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
        opened: list[Any] = []  # held here, so only the client itself can close it
        connect = upstream._connect

        async def keep() -> Any:
            opened.append(await connect())
            return opened[-1]

        upstream._connect = keep  # type: ignore[method-assign]
        try:
            request = asyncio.create_task(upstream.request("GET", "/slow", read_timeout=30))
            await asyncio.sleep(0.1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert len(opened) == 1 and opened[0].writer.is_closing()
            received = await asyncio.wait_for(ended.get(), timeout=5)
            assert received.startswith(b"GET /slow HTTP/1.1\r\n")
            assert upstream._take() is None
        finally:
            await upstream.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
