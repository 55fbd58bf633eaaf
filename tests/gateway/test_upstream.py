"""The gateway's loopback HTTP client (appliance/gateway/upstream.py): what happens to a connection when its
request is given up half-way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.gateway.upstream import Upstream, UpstreamError


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
            assert len(opened) == 1 and opened[0].transport.is_closing()
            received = await asyncio.wait_for(ended.get(), timeout=5)
            assert received.startswith(b"GET /slow HTTP/1.1\r\n")
            assert upstream._take() is None
        finally:
            await upstream.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def _answering(answer: bytes) -> Any:
    """A one-shot server that reads a request's head and writes `answer` (then closes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return handle


async def _ask(answer: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    server = await asyncio.start_server(_answering(answer), "127.0.0.1", 0)
    upstream = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        response = await upstream.request("GET", "/x", read_timeout=5)
        return response.status, response.headers, await response.read()
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()


def test_the_head_is_read_at_once_with_every_header_kept() -> None:
    status, headers, body = asyncio.run(_ask(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nelectric-offset: 0_0\r\nx-empty:\r\nvary: a\r\nvary: b\r\n\r\nok"))
    assert status == 200 and body == b"ok"
    assert headers == [("content-length", "2"), ("electric-offset", "0_0"), ("x-empty", ""), ("vary", "a"),
                       ("vary", "b")]


@pytest.mark.parametrize(("answer", "message"), [
    (b"", "without answering"),
    (b"HTTP/1.1 200 OK\r\ncontent-le", "in the headers"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed status line"),
])
def test_a_broken_head_is_an_upstream_error(answer: bytes, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        asyncio.run(_ask(answer))
