"""The worker's client for the tenant's streams server (specs/durable-streams.md): catch-up reads and appends of
one JSON message, nothing more. It speaks through the gateway's lean loopback HTTP client (gateway/upstream.py:
httpx costs about as much CPU per request as everything else the worker does for an activation) and names a
thread's stream with the gateway's `stream_path` (the contract)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

from appliance.gateway.streams import stream_path
from appliance.gateway.upstream import Upstream, UpstreamError, UpstreamTimeout

MAX_READS: Final = 10_000  # chunks of one catch-up read; a stream that never says up-to-date is an error
TIMEOUT_S: Final = 30.0
_JSON: Final = {"content-type": "application/json"}


class StreamError(Exception):
    """The streams server refused or failed a request; `status` is its HTTP status (0: unreachable/timeout)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamMissing(StreamError):
    pass


class StreamsClient:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = Upstream(host, port)

    async def close(self) -> None:
        await self.upstream.close()

    async def _request(self, method: str, path: str, params: list[tuple[str, str]] | None = None,
                       body: bytes | None = None) -> tuple[int, str | None, str | None, bytes]:
        """(status, Stream-Next-Offset, Stream-Up-To-Date, body)."""
        try:
            response = await self.upstream.request(method, path, params=params, body=body,
                                                   headers=_JSON if body is not None else None,
                                                   read_timeout=TIMEOUT_S)
            content = await response.read()
        except UpstreamTimeout:
            raise StreamError(0, "the streams server timed out") from None
        except UpstreamError as exc:
            raise StreamError(0, f"the streams server is unreachable ({exc})") from None
        return (response.status, response.header("stream-next-offset"), response.header("stream-up-to-date"),
                content)

    async def read_after(self, thread_id: uuid.UUID, offset: str) -> tuple[list[Any], str]:
        """Every message after `offset` (`-1`: from the start) up to the tail, and the tail's offset."""
        messages: list[Any] = []
        current = offset
        for _ in range(MAX_READS):
            status, next_offset, up_to_date, content = await self._request(
                "GET", stream_path(thread_id), params=[("offset", current)])
            if status == 404:
                raise StreamMissing(404, "the thread's stream does not exist")
            if status != 200:
                raise StreamError(status, f"read failed ({status})")
            try:
                chunk = json.loads(content) if content else []
            except ValueError:
                raise StreamError(status, "the stream answered something that is not JSON") from None
            if isinstance(chunk, list):
                messages.extend(chunk)
            next_offset = next_offset or current
            if up_to_date == "true" or next_offset == current:
                return messages, next_offset
            current = next_offset
        raise StreamError(0, "the stream read did not catch up")

    async def reachable(self) -> bool:
        try:
            await self._request("HEAD", "/")
        except StreamError:
            return False
        return True  # any HTTP answer: the server is up

    async def append(self, thread_id: uuid.UUID, message: dict[str, Any]) -> str:
        """Append one message; returns Stream-Next-Offset. Never retried here: whether a failed append reached the
        stream is for the caller to find out (worker.py)."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        status, next_offset, _, _ = await self._request("POST", stream_path(thread_id), body=body)
        if status == 404:
            raise StreamMissing(404, "the thread's stream does not exist")
        if status not in (200, 204):
            raise StreamError(status, f"append refused ({status})")
        if not next_offset:
            raise StreamError(status, "append answered without Stream-Next-Offset")
        return next_offset
