"""Client for the tenant's Durable Streams server (specs/durable-streams.md): one JSON-mode stream per thread.

Only the gateway and the agent workers reach that server (it has no authentication of its own) and both use this
client; callers of the gateway never learn its address. It speaks through the lean loopback HTTP client in
upstream.py (httpx costs about as much CPU per request as everything else an append or an activation does).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

from appliance.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout

JSON: Final = "application/json"
_JSON_HEADERS: Final = {"content-type": JSON}


class StreamError(Exception):
    """The streams server refused or failed a request; `status` is its HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamMissing(StreamError):
    pass


def stream_name(thread_id: uuid.UUID) -> str:
    """The stream of a thread: `thread-<uuid>` (a UUID in canonical form, so never a path of anything else)."""
    # str() of a UUID is its canonical form already; anything else is parsed first (every read and append names
    # a stream, and the parse is a measurable part of a proxied read).
    return f"thread-{thread_id if type(thread_id) is uuid.UUID else uuid.UUID(str(thread_id))}"


def stream_path(thread_id: uuid.UUID) -> str:
    return "/" + stream_name(thread_id)


class StreamsClient:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = Upstream(host, port)

    async def close(self) -> None:
        await self.upstream.close()

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[UpstreamResponse, bytes]:
        try:
            response = await self.upstream.request(method, path, **kwargs)
            return response, await response.read()
        except UpstreamTimeout:
            raise StreamError(0, "streams server timed out") from None
        except UpstreamError as exc:
            raise StreamError(0, f"streams server unreachable ({exc})") from None

    async def create(self, thread_id: uuid.UUID) -> None:
        """Create the thread's stream (idempotent: an existing JSON stream is fine)."""
        response, _ = await self._request("PUT", stream_path(thread_id), headers=_JSON_HEADERS, body=b"")
        if response.status not in (200, 201, 204):
            raise StreamError(response.status, f"creating the stream failed ({response.status})")

    async def append(self, thread_id: uuid.UUID, message: dict[str, Any]) -> str:
        """Append one message; returns Stream-Next-Offset (the position right after it).

        Never retried here: whether a failed append reached the stream is for the caller to find out."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        response, _ = await self._request("POST", stream_path(thread_id), headers=_JSON_HEADERS, body=body)
        if response.status == 404:
            raise StreamMissing(404, "the thread's stream does not exist")
        if response.status not in (200, 204):
            raise StreamError(response.status, f"append refused ({response.status})")
        offset = response.header("stream-next-offset")
        if not offset:
            raise StreamError(response.status, "append answered without Stream-Next-Offset")
        return offset

    async def read_after(self, thread_id: uuid.UUID, offset: str) -> tuple[list[Any], str]:
        """Every message after `offset` up to the current tail, and the tail's offset (catch-up reads, no wait)."""
        messages: list[Any] = []
        current = offset
        for _ in range(10_000):
            response, body = await self._request("GET", stream_path(thread_id), params=[("offset", current)])
            if response.status == 404:
                raise StreamMissing(404, "the thread's stream does not exist")
            if response.status != 200:
                raise StreamError(response.status, f"read failed ({response.status})")
            try:
                chunk = json.loads(body) if body else []
            except ValueError:
                raise StreamError(response.status, "the stream answered something that is not JSON") from None
            if isinstance(chunk, list):
                messages.extend(chunk)
            next_offset = response.header("stream-next-offset") or current
            if response.header("stream-up-to-date") == "true" or next_offset == current:
                return messages, next_offset
            current = next_offset
        raise StreamError(0, "stream read did not catch up")

    async def reachable(self) -> bool:
        try:
            await self._request("HEAD", "/", read_timeout=2.0)
        except StreamError:
            return False
        return True
