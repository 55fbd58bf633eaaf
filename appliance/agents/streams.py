"""The worker's client for the tenant's streams server (specs/durable-streams.md): catch-up reads and appends of
one JSON message, nothing more. Kept apart from the gateway's client, which is tuned for proxying; both name a
thread's stream with the gateway's `stream_path` (the contract)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

import httpx

from appliance.gateway.streams import stream_path

JSON: Final = "application/json"
MAX_READS: Final = 10_000  # chunks of one catch-up read; a stream that never says up-to-date is an error


class StreamError(Exception):
    """The streams server refused or failed a request; `status` is its HTTP status (0: unreachable/timeout)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StreamMissing(StreamError):
    pass


class StreamsClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            # The server must never be reached through an environment proxy.
            trust_env=False,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise StreamError(0, "the streams server timed out") from None
        except httpx.HTTPError as exc:
            raise StreamError(0, f"the streams server is unreachable ({type(exc).__name__})") from None

    async def read_after(self, thread_id: uuid.UUID, offset: str) -> tuple[list[Any], str]:
        """Every message after `offset` (`-1`: from the start) up to the tail, and the tail's offset."""
        messages: list[Any] = []
        current = offset
        for _ in range(MAX_READS):
            response = await self._request("GET", stream_path(thread_id), params={"offset": current})
            if response.status_code == 404:
                raise StreamMissing(404, "the thread's stream does not exist")
            if response.status_code != 200:
                raise StreamError(response.status_code, f"read failed ({response.status_code})")
            try:
                chunk = response.json() if response.content else []
            except ValueError:
                raise StreamError(response.status_code, "the stream answered something that is not JSON") from None
            if isinstance(chunk, list):
                messages.extend(chunk)
            next_offset = response.headers.get("stream-next-offset") or current
            if response.headers.get("stream-up-to-date") == "true" or next_offset == current:
                return messages, next_offset
            current = next_offset
        raise StreamError(0, "the stream read did not catch up")

    async def append(self, thread_id: uuid.UUID, message: dict[str, Any]) -> str:
        """Append one message; returns Stream-Next-Offset. Never retried here: whether a failed append reached the
        stream is for the caller to find out (worker.py)."""
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

    async def reachable(self) -> bool:
        try:
            await self.http.request("HEAD", "/", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True
