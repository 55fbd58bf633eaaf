"""Streaming reverse proxy for the shape API and thread streams: the upstream's status, headers and body pass
through unbuffered (each chunk is forwarded as it arrives, so long-polls and SSE work), minus what belongs to a
single hop or would reveal the upstream (its CORS answers, Location, Server)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from appliance.gateway.core.errors import ApiError
from appliance.gateway.upstream import Upstream, UpstreamError, UpstreamResponse, UpstreamTimeout

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


def private_cache_control(value: str) -> str:
    """The upstream's caching rules for one caller's eyes: `public` becomes `private` and shared-cache-only
    directives go. Electric marks shape answers public (its scaling story is a CDN), but behind the gateway a
    shape's WHERE is the caller's houses: a shared cache keyed on the URL would serve one user's rows to
    another (and a cookie-authenticated browser request carries no Authorization for Vary to key on)."""
    kept = []
    for directive in value.split(","):
        name = directive.strip().split("=", 1)[0].lower()
        if name in ("public", "s-maxage", "proxy-revalidate"):
            continue
        if directive.strip():
            kept.append(directive.strip())
    return ", ".join(["private", *kept])


def _response_headers(upstream: list[tuple[str, str]], vary_authorization: bool) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in upstream if k.lower() not in _DROPPED_RESPONSE_HEADERS]
    if vary_authorization:
        headers = [(k, private_cache_control(v) if k.lower() == "cache-control" else v) for k, v in headers]
        if not any(k.lower() == "cache-control" for k, _ in headers):
            headers.append(("cache-control", "private"))  # no rule upstream: still never a shared cache's
        # Responses depend on who asks (the WHERE is the caller's houses): shared caches must key on the token.
        varies = [v for k, v in headers if k.lower() == "vary"]
        headers = [(k, v) for k, v in headers if k.lower() != "vary"]
        values = {part.strip() for v in varies for part in v.split(",") if part.strip()}
        values.add("Authorization")
        headers.append(("vary", ", ".join(sorted(values))))
    return headers


async def proxy_get(upstream: Upstream, path: str, params: list[tuple[str, str]] | str, headers: dict[str, str],
                    read_timeout: float | None, upstream_name: str, vary_authorization: bool = True,
                    open_ended: bool = False, *, method: str = "GET", body: bytes | None = None
                    ) -> Proxied:
    """GET (or `method`, with `body`) from the upstream and stream the answer back. `open_ended` (SSE): the
    answer has no end of its own, so the client's disconnection is watched to stop it; other answers end by
    themselves (a long-poll within its timeout) and skip that watcher, which costs two tasks per response."""
    try:
        response = await upstream.request(method, path, params=params, headers=headers, body=body,
                                          read_timeout=read_timeout)
    except UpstreamTimeout:
        raise ApiError(504, "upstream_timeout", f"the {upstream_name} did not answer in time") from None
    except UpstreamError:
        raise ApiError(503, "upstream_unavailable", f"the {upstream_name} is unavailable",
                       {"Retry-After": "1"}) from None

    answer_headers = _response_headers(response.headers, vary_authorization)
    if open_ended:
        return _RawHeadersResponse(_relayed(response, upstream_name), response.status, answer_headers,
                                   BackgroundTask(response.aclose), response)
    return _EndingResponse(response, upstream_name, answer_headers)


async def _relayed(response: UpstreamResponse, upstream_name: str) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives."""
    try:
        async for chunk in response.iter_bytes():
            yield chunk
    except UpstreamError as exc:
        # Abort the client's response rather than end it cleanly: a truncated body must not look complete.
        log.info("%s stream ended abnormally: %s", upstream_name, exc)
        raise
    finally:
        # Also on client disconnect (the cancellation lands in this frame): the connection is not reused.
        await response.aclose()


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class _Discardable:
    """An answer relayed from `_upstream`, which can be given up unsent."""

    _upstream: UpstreamResponse

    async def discard(self) -> None:
        """Give the answer up unsent (its upstream connection is not reused)."""
        await self._upstream.aclose()


class _RawHeadersResponse(_Discardable, StreamingResponse):
    """A StreamingResponse whose headers are exactly the given list (repeated fields kept, nothing added), with a
    watcher of the client's disconnection: for answers with no end of their own (SSE)."""

    def __init__(self, content: AsyncIterator[bytes], status_code: int, raw_headers: list[tuple[str, str]],
                 background: BackgroundTask, upstream: UpstreamResponse) -> None:
        super().__init__(content, status_code=status_code, background=background)
        self.raw_headers = _raw(raw_headers)
        self._upstream = upstream


class _EndingResponse(_Discardable, Response):
    """For answers that end by themselves: chunks are relayed as they arrive, without a disconnect watcher.

    Not a StreamingResponse: its set-up (headers made and then replaced, a background task, two nested async
    generators around the upstream's body) was about a tenth of a proxied read's CPU."""

    def __init__(self, upstream: UpstreamResponse, upstream_name: str, raw_headers: list[tuple[str, str]]) -> None:
        # Response.__init__ is not called: it renders a body and makes headers this answer does not have.
        self.status_code = upstream.status
        self.raw_headers = _raw(raw_headers)
        self.background = None  # FastAPI may set a route's background tasks here; run after the answer
        self._upstream = upstream
        self._upstream_name = upstream_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream = self._upstream
        ended = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in upstream.iter_bytes():
                # A body of known length ends with its last byte: that chunk ends the answer too (one message
                # through the middleware and the server fewer than an empty closing one, on every proxied read).
                ended = upstream.body_read
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        except UpstreamError as exc:
            # Abort the client's response rather than end it cleanly: a truncated body must not look complete.
            log.info("%s stream ended abnormally: %s", self._upstream_name, exc)
            raise
        finally:
            # Also when the client is gone (a failed send, or the cancellation landing here): the connection is
            # not reused unless its answer was read to the end.
            await upstream.aclose()
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


# What proxy_get answers: a Response that can also be given up unsent (`discard`).
Proxied = _RawHeadersResponse | _EndingResponse
