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
from collections.abc import AsyncIterator
from typing import Final, cast
from urllib.parse import urlencode

MAX_IDLE_S: Final = 2.0
MAX_IDLE_CONNECTIONS: Final = 64
MAX_HEADER_BYTES: Final = 64 * 1024
READ_SIZE: Final = 64 * 1024
# Unread bytes a connection buffers before it stops reading the socket (an answer bigger than its reader keeps up
# with, such as a long catch-up read relayed to a slow client).
_PAUSE_AT: Final = 4 * READ_SIZE
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class UpstreamError(Exception):
    """The upstream could not be reached or broke the protocol (no usable answer)."""


class UpstreamTimeout(UpstreamError):
    pass


class _StaleConnection(UpstreamError):
    """A reused connection turned out closed before any answer: safe to retry idempotent requests."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection whose bytes land in a buffer that reads take from directly.

    Not asyncio's StreamReader/StreamWriter with asyncio.timeout around each read: on a proxied read those were
    about a tenth of the gateway's CPU (a Timeout, a timer and a future for every read, even when the answer was
    already buffered). Here a read that finds its bytes buffered returns them at once; only a read that has to
    wait makes a future, and a timer for its deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False  # nothing more will arrive: the server closed its end, or the connection was lost
        self._error: Exception | None = None
        self._paused = False
        self.idle_since = time.monotonic()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _PAUSE_AT and not self._paused and self.transport is not None:
            # Its reader is slower than the server: the kernel holds the rest until the next wait resumes reading.
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading and writing ------------------------------------------------------------------------------------

    def reusable(self) -> bool:
        """Still open, with nothing unread (bytes from an idle server would be a protocol error, not an answer)."""
        transport = self.transport
        return not self._eof and not self._buffer and transport is not None and not transport.is_closing()

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._loop.time() + timeout

    async def _wait(self, deadline: float | None) -> None:
        """Until more bytes arrive or nothing more can (then the caller looks at what it has), or until `deadline`
        in loop time (UpstreamTimeout)."""
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiter = waiter
        timer = None if deadline is None else self._loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _ended(self, wanted: int) -> Exception:
        """What a read raises that needs bytes that will never come."""
        if self._error is not None:
            return ConnectionResetError(str(self._error))
        return asyncio.IncompleteReadError(bytes(self._buffer), wanted)

    async def read_until(self, separator: bytes, limit: int, timeout: float | None) -> bytes:
        """The bytes up to and including `separator`, within `timeout` for all of them."""
        deadline = self._deadline(timeout)
        searched = 0
        while (found := self._buffer.find(separator, searched)) < 0:
            if len(self._buffer) > limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self._buffer))
            if self._eof:
                raise self._ended(len(self._buffer) + len(separator))
            searched = max(0, len(self._buffer) - len(separator) + 1)
            await self._wait(deadline)
        end = found + len(separator)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data

    async def read_some(self, most: int, timeout: float | None) -> bytes:
        """Up to `most` bytes as soon as there are any, within `timeout`; b"" once the server has closed."""
        deadline = self._deadline(timeout)
        while not self._buffer:
            if self._eof:
                if self._error is not None:
                    raise ConnectionResetError(str(self._error))
                return b""
            await self._wait(deadline)
        data = bytes(self._buffer[:most])
        del self._buffer[:most]
        return data

    async def read_exactly(self, count: int, timeout: float | None) -> bytes:
        deadline = self._deadline(timeout)
        while len(self._buffer) < count:
            if self._eof:
                raise self._ended(count)
            await self._wait(deadline)
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("upstream did not answer in time"))


# What reading a body can raise, and the one answer each gets (read() and iter_bytes()).
_BODY_ERRORS = (asyncio.IncompleteReadError, ConnectionError, OSError)


def _body_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.IncompleteReadError):
        return UpstreamError("upstream closed the connection mid-body")
    return UpstreamError(f"upstream connection failed ({type(exc).__name__})")


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

    @property
    def body_read(self) -> bool:
        """Whether every byte of the body has been handed out (known before the end is looked for when the body's
        length was given)."""
        return self._done or (self._framing == "length" and self._remaining == 0)

    async def _next_piece(self, connection: _Connection) -> bytes | None:
        """The body's next piece of data as it arrives (chunked framing removed); None at its end."""
        timeout = self._read_timeout
        if self._framing == "length":
            if self._remaining <= 0:
                return None
            data = await connection.read_some(min(READ_SIZE, self._remaining), timeout)
            if not data:
                raise UpstreamError("upstream closed the connection mid-body")
            self._remaining -= len(data)
            return data
        if self._framing == "chunked":
            line = await connection.read_until(b"\n", MAX_HEADER_BYTES, timeout)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise UpstreamError("malformed chunk size") from None
            if size == 0:
                # Trailers (ignored) end with an empty line.
                while (await connection.read_until(b"\n", MAX_HEADER_BYTES, timeout)) not in (b"\r\n", b"\n"):
                    pass
                return None
            return (await connection.read_exactly(size + 2, timeout))[:-2]
        # "close": the body runs until the server closes the connection
        data = await connection.read_some(READ_SIZE, timeout)
        if not data:
            self._keep_alive = False
            return None
        return data

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body's data as it arrives (chunked framing removed)."""
        connection = self._connection
        try:
            if connection is None or self._done:
                return
            while (data := await self._next_piece(connection)) is not None:
                yield data
            self._done = True
        except _BODY_ERRORS as exc:
            raise _body_error(exc) from None
        finally:
            self._release()

    async def read(self) -> bytes:
        """The whole body (without an async generator: the streams client reads every answer it gets)."""
        connection = self._connection
        pieces: list[bytes] = []
        try:
            if connection is None or self._done:
                return b""
            while (data := await self._next_piece(connection)) is not None:
                pieces.append(data)
            self._done = True
        except _BODY_ERRORS as exc:
            raise _body_error(exc) from None
        finally:
            self._release()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

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
            if now - connection.idle_since < MAX_IDLE_S and connection.reusable():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port), self.connect_timeout
            )
        except TimeoutError:
            raise UpstreamTimeout("upstream did not accept the connection in time") from None
        except OSError as exc:
            raise UpstreamError(f"upstream unreachable ({type(exc).__name__})") from None
        return connection

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
        try:
            connection.write(payload)
            status_line, headers = await self._read_head(connection, read_timeout)
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
    async def _read_head(connection: _Connection, timeout: float | None) -> tuple[bytes, list[tuple[str, str]]]:
        """The status line and headers, read in one go (one await, not one per line: this runs for every
        proxied request), within `timeout`."""
        try:
            head = await connection.read_until(b"\r\n\r\n", MAX_HEADER_BYTES, timeout)
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
