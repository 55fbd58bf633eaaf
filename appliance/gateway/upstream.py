"""A small HTTP/1.1 client for the tenant's own loopback services (streams server, sync engine).

Why not httpx: every proxied read and every entry goes through here, and httpx costs about half a millisecond
of CPU per request on top of the socket work - as much as the rest of a proxied read. This client does only
what those upstreams need: keep-alive connections in a pool, requests with a Content-Length body, responses
framed by Content-Length, chunked encoding or connection close, and bodies read incrementally (long-polls and
SSE pass through as they arrive).

Reused connections may have been closed by the server while idle (Node closes idle keep-alive sockets after
5 s): idle connections older than `MAX_IDLE_S` are dropped, and a request that fails on a reused connection
before any byte of the answer is retried once on a new connection - unless it is a POST, which the caller
decides about (an append must not be repeated blindly).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Final, TypeVar
from urllib.parse import urlencode

MAX_IDLE_S: Final = 2.0
MAX_IDLE_CONNECTIONS: Final = 64
MAX_HEADER_BYTES: Final = 64 * 1024
READ_SIZE: Final = 64 * 1024
_NO_BODY_STATUSES: Final = frozenset({204, 304})
T = TypeVar("T")


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol (no usable answer)."""


class UpstreamTimeout(UpstreamError):
    pass


class _StaleConnection(UpstreamError):
    """A reused connection turned out closed before any answer: safe to retry idempotent requests."""


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _within(timeout: float | None, awaitable: Awaitable[T]) -> T:
    if timeout is None:
        return await awaitable
    try:
        # asyncio.timeout, not wait_for: no extra task per read (this runs for every line and chunk).
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise UpstreamTimeout("upstream did not answer in time") from None


class UpstreamResponse:
    def __init__(self, pool: Upstream, connection: _Connection, status: int, headers: list[tuple[str, str]],
                 framing: str, length: int, read_timeout: float | None, keep_alive: bool) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = status
        self.headers = headers
        self._framing = framing  # "none" | "length" | "chunked" | "close"
        self._remaining = length
        self._read_timeout = read_timeout
        self._keep_alive = keep_alive
        self._done = framing == "none"
        if self._done:
            self._release()

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep_alive and self._done:
            self._pool._put(connection)
        else:
            connection.close()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body's data as it arrives (chunked framing removed)."""
        connection = self._connection
        try:
            if connection is None or self._done:
                return
            reader = connection.reader
            if self._framing == "length":
                while self._remaining > 0:
                    data = await _within(self._read_timeout, reader.read(min(READ_SIZE, self._remaining)))
                    if not data:
                        raise UpstreamError("upstream closed the connection mid-body")
                    self._remaining -= len(data)
                    yield data
            elif self._framing == "chunked":
                while True:
                    line = await _within(self._read_timeout, reader.readline())
                    if not line:
                        raise UpstreamError("upstream closed the connection mid-body")
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise UpstreamError("malformed chunk size") from None
                    if size == 0:
                        # Trailers (ignored) end with an empty line.
                        while (await _within(self._read_timeout, reader.readline())) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    data = await _within(self._read_timeout, reader.readexactly(size + 2))
                    yield data[:-2]
            else:  # "close": the body runs until the server closes the connection
                while True:
                    data = await _within(self._read_timeout, reader.read(READ_SIZE))
                    if not data:
                        break
                    yield data
                self._keep_alive = False
            self._done = True
        except asyncio.IncompleteReadError:
            raise UpstreamError("upstream closed the connection mid-body") from None
        except (ConnectionError, OSError) as exc:
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None
        finally:
            self._release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_bytes()])

    async def aclose(self) -> None:
        """Give up the response: an unread body means the connection cannot be reused."""
        self._release()


class Upstream:
    """Connections to one loopback service."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._host_header = f"{host}:{port}"

    def _put(self, connection: _Connection) -> None:
        if len(self._idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < MAX_IDLE_S and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES), self.connect_timeout
            )
        except TimeoutError:
            raise UpstreamTimeout("upstream did not accept the connection in time") from None
        except OSError as exc:
            raise UpstreamError(f"upstream unreachable ({type(exc).__name__})") from None
        return _Connection(reader, writer)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(self, method: str, path: str, *, params: list[tuple[str, str]] | str | None = None,
                      headers: dict[str, str] | None = None, body: bytes | None = None,
                      read_timeout: float | None = 30.0) -> UpstreamResponse:
        """`params`: name/value pairs, or a query string already encoded (a caller that sends the same
        parameters many times encodes them once)."""
        query = params if isinstance(params, str) else urlencode(params) if params else ""
        target = path + ("?" + query if query else "")
        lines = [f"{method} {target} HTTP/1.1", f"host: {self._host_header}"]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise UpstreamError("header values may not contain line breaks")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"content-length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = head + (body or b"")
        connection = self._take()
        if connection is not None:
            try:
                return await self._exchange(connection, method, payload, read_timeout, reused=True)
            except _StaleConnection:
                if method == "POST":
                    raise UpstreamError("upstream closed a kept-alive connection") from None
        return await self._exchange(await self._connect(), method, payload, read_timeout, reused=False)

    async def _exchange(self, connection: _Connection, method: str, payload: bytes, read_timeout: float | None,
                        reused: bool) -> UpstreamResponse:
        reader, writer = connection.reader, connection.writer
        try:
            writer.write(payload)
            status_line, headers = await _within(read_timeout, self._read_head(reader))
            if not status_line:
                connection.close()
                if reused:
                    raise _StaleConnection("closed before answering")
                raise UpstreamError("upstream closed the connection without answering")
            parts = status_line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise UpstreamError("malformed status line")
            status = int(parts[1])
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            connection.close()
            if reused and isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
                raise _StaleConnection("connection reset") from None
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None
        except BaseException:
            # UpstreamError, or cancelled mid-exchange (a client gone, a read given up): the connection is in
            # an unknown state, never reused.
            connection.close()
            raise
        return self._response(connection, method, parts[0], status, headers, read_timeout)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
        """The status line and headers, read in one go (one await, not one per line: this runs for every
        proxied request)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return b"", []  # closed before answering
            raise UpstreamError("upstream closed the connection in the headers") from None
        except asyncio.LimitOverrunError:
            raise UpstreamError("upstream headers too large") from None
        status_line, _, rest = head[:-4].partition(b"\r\n")
        headers: list[tuple[str, str]] = []
        for line in rest.decode("latin-1").split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep:
                raise UpstreamError("malformed header line")
            headers.append((name.strip(), value.strip()))
        return status_line, headers

    def _response(self, connection: _Connection, method: str, version: str, status: int,
                  headers: list[tuple[str, str]], read_timeout: float | None) -> UpstreamResponse:
        lowered = {k.lower(): v for k, v in headers}
        keep_alive = lowered.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if method == "HEAD" or status in _NO_BODY_STATUSES or 100 <= status < 200:
            framing, length = "none", 0
        elif "chunked" in lowered.get("transfer-encoding", "").lower():
            framing, length = "chunked", 0
        elif "content-length" in lowered:
            try:
                length = int(lowered["content-length"])
            except ValueError:
                connection.close()
                raise UpstreamError("malformed Content-Length") from None
            framing = "length" if length > 0 else "none"
        else:
            framing, length, keep_alive = "close", 0, False
        return UpstreamResponse(self, connection, status, headers, framing, length, read_timeout, keep_alive)
