"""The requests every client repeats, answered before FastAPI's router: a shape GET, a thread stream read and an
entry append (issue 21).

FastAPI's matching (a regular expression per route, tried in turn), dependency resolution and parameter
validation cost about a third of a proxied read's CPU. These three requests, when well formed, are answered here
by the same functions their routes call (the same authentication, access decision, audit and error answers);
everything else, including any request here that is not well formed in the plainest way (a thread id not in
canonical form, a parameter given twice or not matching its pattern, a body that is not JSON or does not
validate), is left to the routes, so every error a route gives (422 with its message, 401 before 422...) is
still given by the route itself, in the same order.

Errors raised here are answered by the app's own exception handlers, looked up as Starlette's
ExceptionMiddleware looks them up; anything they do not handle goes up to ServerErrorMiddleware (500), as from a
route.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette._exception_handler import _lookup_exception_handler
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.gateway.api.deps import get_principal
from appliance.gateway.api.routes.shapes import get_shape_for
from appliance.gateway.api.routes.threads import CURSOR_PATTERN, LIVE_PATTERN, OFFSET_PATTERN, entry_answer, stream_read
from appliance.gateway.domain.models import EntryCreate
from appliance.gateway.runtime import Gateway
from appliance.tenantdb.schema import SYNCED_TABLES

SHAPES: Final = "/api/shapes/"
THREADS: Final = "/api/threads/"
STREAM: Final = "/stream"
ENTRIES: Final = "/entries"
# The canonical text of a UUID (what clients send): anything else the route validates and answers itself.
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# The routes' Query patterns, matched as pydantic matches them (the whole value; `$` is not before a newline).
_READ_PARAMS: Final = {"offset": re.compile(OFFSET_PATTERN), "live": re.compile(LIVE_PATTERN),
                       "cursor": re.compile(CURSOR_PATTERN)}
_JSON_HEADERS: Final = (b"content-type", b"application/json")


# Cached by their text, as clients repeat them (a live reader asks for the same thread again and again): parsing
# a UUID was a twentieth of a proxied read's CPU.
@functools.lru_cache(maxsize=4096)
def _canonical_uuid(text: str) -> uuid.UUID | None:
    return uuid.UUID(text) if _UUID.fullmatch(text) else None


def _thread_id(path: str, suffix: str) -> uuid.UUID | None:
    """The thread id of `/api/threads/<id><suffix>` when it is in canonical form."""
    return _canonical_uuid(path[len(THREADS):-len(suffix)])


def _read_params(scope: Scope) -> dict[str, str] | None:
    """offset, live and cursor when each is given at most once and matches its pattern; None otherwise. Parsed
    as Request.query_params parses them, without building its multi-dict."""
    found: dict[str, str] = {}
    query = scope["query_string"]
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else ():
        pattern = _READ_PARAMS.get(name)
        if pattern is None:
            continue  # the route ignores other parameters too
        if name in found or not pattern.fullmatch(value):
            return None
        found[name] = value
    return found


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for a request whose body was already read here: the body first, then the connection's own."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_media_type(headers: Mapping[str, str]) -> bool:
    content_type = headers.get("content-type")
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


async def _send_json(send: Send, status: int, content: Any) -> None:
    # As JSONResponse renders and heads it.
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON_HEADERS]})
    await send({"type": "http.response.body", "body": body})


class HotPaths:
    """ASGI middleware, innermost of the app's own (inside the front door's client, CORS and the body limit)."""

    def __init__(self, app: ASGIApp, gateway: Gateway, handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self.gateway = gateway
        # The app's exception handlers (install_error_handlers) by exception class, as ExceptionMiddleware has them;
        # the one for everything else (500) is ServerErrorMiddleware's, which sees whatever is raised from here.
        self.handlers = {key: handler for key, handler in handlers.items()
                         if not isinstance(key, int) and key is not Exception}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "GET":
                if path.startswith(SHAPES):
                    table = path[len(SHAPES):]
                    if table in SYNCED_TABLES:
                        await self._answer(self._shape(table, Request(scope, receive)), scope, receive, send)
                        return
                elif path.startswith(THREADS) and path.endswith(STREAM):
                    thread_id = _thread_id(path, STREAM)
                    params = _read_params(scope) if thread_id is not None else None
                    if thread_id is not None and params is not None:
                        await self._answer(self._read(thread_id, params, Request(scope, receive)), scope, receive,
                                           send)
                        return
            elif method == "POST" and path.startswith(THREADS) and path.endswith(ENTRIES):
                thread_id = _thread_id(path, ENTRIES)
                if thread_id is not None:
                    await self._append(thread_id, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, handling: Any, scope: Scope, receive: Receive, send: Send) -> None:
        """Run a handler coroutine that sends its own answer; its errors answered as the routes' would be."""
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await handling(sending)
        except Exception as exc:
            handler = _lookup_exception_handler(self.handlers, exc)  # type: ignore[arg-type]
            if handler is None or started:
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)

    def _shape(self, table: str, request: Request) -> Any:
        async def handle(send: Send) -> None:
            principal = await get_principal(request)
            response = await get_shape_for(table, request, principal, self.gateway)
            await response(request.scope, request.receive, send)

        return handle

    def _read(self, thread_id: uuid.UUID, params: dict[str, str], request: Request) -> Any:
        async def handle(send: Send) -> None:
            principal = await get_principal(request)
            response = await stream_read(self.gateway, principal, thread_id, params.get("offset", "-1"),
                                         params.get("live"), params.get("cursor"), request.headers)
            await response(request.scope, request.receive, send)

        return handle

    async def _append(self, thread_id: uuid.UUID, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await request.body()
        except ClientDisconnect:
            return  # nobody to answer
        except Exception as exc:  # the body limit's 413, answered as the route's reading it would be
            await self._answer(_raising(exc), scope, receive, send)
            return
        entry: EntryCreate | None = None
        if body and _json_media_type(request.headers):
            try:
                # Parsed and validated in one pass; a body this refuses (not JSON, or JSON that json.loads reads
                # differently) is the route's to answer.
                entry = EntryCreate.model_validate_json(body)
            except ValidationError:
                entry = None
        if entry is None:
            # Not JSON, or not an entry: the route answers (422 after authentication, as ever).
            await self.app(scope, _replaying(body, receive), send)
            return

        async def handle(sending: Send) -> None:
            principal = await get_principal(request)
            outcome = await self.gateway.entries.post(principal, thread_id, entry)
            await _send_json(sending, 200 if outcome.duplicate else 201, entry_answer(outcome))

        await self._answer(handle, scope, receive, send)


def _raising(exc: Exception) -> Any:
    async def handle(send: Send) -> None:
        del send
        raise exc

    return handle
