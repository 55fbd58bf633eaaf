"""Client for the tenant's Durable Streams server (specs/durable-streams.md): one JSON-mode stream per thread.

Only the gateway and the agent workers reach that server (it has no authentication of its own); callers of the
gateway never learn its address.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

import httpx

JSON: Final = "application/json"


class StreamError(Exception):
    """The streams server refused or failed a request; `status` is its HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamMissing(StreamError):
    pass


def stream_path(thread_id: uuid.UUID) -> str:
    """The stream of a thread: `thread-<uuid>` (a UUID in canonical form, so never a path of anything else)."""
    return f"/thread-{uuid.UUID(str(thread_id))}"


class StreamsClient:
    def __init__(self, base_url: str, long_poll_s: float) -> None:
        self.base_url = base_url
        self.long_poll_s = long_poll_s
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10.0, read=long_poll_s + 15),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            # The server must never be reached through an environment proxy.
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise StreamError(0, "streams server timed out") from None
        except httpx.HTTPError as exc:
            raise StreamError(0, f"streams server unreachable ({type(exc).__name__})") from None

    async def create(self, thread_id: uuid.UUID) -> None:
        """Create the thread's stream (idempotent: an existing JSON stream is fine)."""
        response = await self._request("PUT", stream_path(thread_id), headers={"content-type": JSON})
        if response.status_code not in (200, 201, 204):
            raise StreamError(response.status_code, f"creating the stream failed ({response.status_code})")

    async def append(self, thread_id: uuid.UUID, message: dict[str, Any]) -> str:
        """Append one message; returns Stream-Next-Offset (the position right after it)."""
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        response = await self._request("POST", stream_path(thread_id), content=body, headers={"content-type": JSON})
        if response.status_code == 404:
            raise StreamMissing(404, "the thread's stream does not exist")
        if response.status_code not in (200, 204):
            raise StreamError(response.status_code, f"append refused ({response.status_code})")
        offset = response.headers.get("stream-next-offset")
        if not offset:
            raise StreamError(response.status_code, "append answered without Stream-Next-Offset")
        return offset

    async def read_after(self, thread_id: uuid.UUID, offset: str) -> tuple[list[Any], str]:
        """Every message after `offset` up to the current tail, and the tail's offset (catch-up reads, no wait)."""
        messages: list[Any] = []
        current = offset
        for _ in range(10_000):
            response = await self._request("GET", stream_path(thread_id), params={"offset": current})
            if response.status_code == 404:
                raise StreamMissing(404, "the thread's stream does not exist")
            if response.status_code != 200:
                raise StreamError(response.status_code, f"read failed ({response.status_code})")
            chunk = response.json() if response.content else []
            if isinstance(chunk, list):
                messages.extend(chunk)
            next_offset = response.headers.get("stream-next-offset") or current
            if response.headers.get("stream-up-to-date") == "true" or next_offset == current:
                return messages, next_offset
            current = next_offset
        raise StreamError(0, "stream read did not catch up")

    async def reachable(self) -> bool:
        try:
            await self.http.request("HEAD", "/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True
