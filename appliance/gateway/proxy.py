"""Streaming reverse proxy for the shape API and thread streams: the upstream's status, headers and body pass
through unbuffered (each chunk is forwarded as it arrives, so long-polls and SSE work), minus what belongs to a
single hop or would reveal the upstream (its CORS answers, Location, Server)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from appliance.gateway.core.errors import ApiError

log = logging.getLogger("appliance.gateway")

# RFC 9110 hop-by-hop fields, plus what the gateway itself decides (CORS) or must not leak (Location, Server).
_DROPPED_RESPONSE_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
    "upgrade", "server", "date", "location", "access-control-allow-origin", "access-control-allow-methods",
    "access-control-allow-headers", "access-control-expose-headers", "access-control-allow-credentials",
    "access-control-max-age", "cross-origin-resource-policy",
})
# What a client may pass on to the upstream: conditional requests and content negotiation, never credentials.
FORWARDED_REQUEST_HEADERS = ("if-none-match", "accept")


def forwarded_headers(request_headers: Mapping[str, str]) -> dict[str, str]:
    headers = {name: request_headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request_headers}
    # Bodies pass through as raw bytes, so the upstream must not compress for a client that did not ask.
    headers["accept-encoding"] = request_headers.get("accept-encoding", "identity")
    return headers


def _response_headers(upstream: httpx.Response, vary_authorization: bool) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in upstream.headers.multi_items() if k.lower() not in _DROPPED_RESPONSE_HEADERS]
    if vary_authorization:
        # Responses depend on who asks (the WHERE is the caller's houses): shared caches must key on the token.
        varies = [v for k, v in headers if k.lower() == "vary"]
        headers = [(k, v) for k, v in headers if k.lower() != "vary"]
        values = {part.strip() for v in varies for part in v.split(",") if part.strip()}
        values.add("Authorization")
        headers.append(("vary", ", ".join(sorted(values))))
    return headers


async def proxy_get(client: httpx.AsyncClient, url: str, params: list[tuple[str, str]], headers: dict[str, str],
                    read_timeout: float | None, upstream_name: str, vary_authorization: bool = True
                    ) -> StreamingResponse:
    request = client.build_request(
        "GET", url, params=params, headers=headers,
        timeout=httpx.Timeout(10.0, read=read_timeout),
    )
    try:
        upstream = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise ApiError(504, "upstream_timeout", f"the {upstream_name} did not answer in time") from None
    except httpx.HTTPError:
        raise ApiError(503, "upstream_unavailable", f"the {upstream_name} is unavailable",
                       {"Retry-After": "1"}) from None

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            # Abort the client's response rather than end it cleanly: a truncated body must not look complete.
            log.info("%s stream ended abnormally: %s", upstream_name, type(exc).__name__)
            raise
        finally:
            # Also on client disconnect (the cancellation lands in this frame): free the upstream connection.
            await upstream.aclose()

    return _RawHeadersResponse(body(), upstream.status_code, _response_headers(upstream, vary_authorization),
                               BackgroundTask(upstream.aclose))


class _RawHeadersResponse(StreamingResponse):
    """A StreamingResponse whose headers are exactly the given list (repeated fields kept, nothing added)."""

    def __init__(self, content: AsyncIterator[bytes], status_code: int, raw_headers: list[tuple[str, str]],
                 background: BackgroundTask) -> None:
        super().__init__(content, status_code=status_code, background=background)
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw_headers]
