"""ASGI middleware (pure ASGI, so streamed responses pass through untouched): the request body size limit, the
front door's client address, and what CORS answers."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# FastAPI's native OpenTelemetry instrumentation, off: nothing collects it on an appliance host, and it would
# otherwise look up the global providers on every request.
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413: at once when Content-Length says so, and while reading when a
    chunked body grows past it (before the route ever sees it)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: Any = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                await _send_error(send, 400, "bad_request", "invalid Content-Length")
                return
            if length > self.max_bytes:
                await _send_error(send, 413, "payload_too_large", f"request body over {self.max_bytes} bytes")
                return
            await self.app(scope, receive, send)
            return
        received = 0
        limit = self.max_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


# scope["client"] of a connection on the front-door socket that the front door's own user made (SO_PEERCRED, set
# by appliance.gateway.serving). Anything else on that socket gets no client address at all.
FRONT_DOOR_PEER = ("front-door", 0)


class FrontDoorClient:
    """The real client of a request the front door forwarded, and only of those.

    The front door reaches the gateway over a unix socket whose directory only the tenant's user and the front
    door's group may enter (TenantConfig.gateway_socket), and the gateway's protocol marks a connection there as
    the front door's only when the kernel says its peer is the front door's user (SO_PEERCRED: the tenant's own
    processes can reach the socket too). Loopback TCP is open to every local user, so `X-Forwarded-For` arriving
    there could be anyone's invention and is ignored. Caddy replaces any X-Forwarded-For a client sends with the
    address it saw, so the last entry is the client. Rate limits and audit records then carry that address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client") == FRONT_DOOR_PEER:
            forwarded_for = forwarded_proto = None
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-for":
                    forwarded_for = value
                elif name == b"x-forwarded-proto":
                    forwarded_proto = value
            client = _last_address(forwarded_for)
            scope["client"] = (client, 0) if client else None
            if forwarded_proto in (b"http", b"https"):
                scope["scheme"] = forwarded_proto.decode()
        await self.app(scope, receive, send)


def _last_address(header: bytes | None) -> str | None:
    if not header:
        return None
    candidate = header.decode("latin1").rsplit(",", 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


# Response headers a browser app on another origin must be able to read: the Electric client reads these to
# follow a shape, the Durable Streams client these to follow a thread.
EXPOSED_HEADERS = (
    "electric-handle", "electric-offset", "electric-schema", "electric-cursor", "electric-up-to-date",
    "stream-next-offset", "stream-up-to-date", "etag", "retry-after",
)
CORS_ALLOWED_HEADERS = ("authorization", "content-type", "if-none-match")
CORS_ALLOWED_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
CORS_MAX_AGE_S = 600
