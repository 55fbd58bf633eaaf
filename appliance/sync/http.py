"""The Electric HTTP Shape API v1 over the engine: a thin Starlette app.

Routes: `GET /v1/shape` (read a shape log: initial snapshot chunks, catch-up, long-poll, SSE; or a subset
snapshot, see subset.py), `POST /v1/shape` (a subset snapshot with its parameters in the body), `DELETE
/v1/shape` (202; only with `allow_delete`, for tests), `OPTIONS /v1/shape` (CORS preflight), `GET /v1/health`.
Request validation, status codes, bodies, headers and cache-control values follow Electric's plug layer
(sync-service 1.x), which the official clients depend on; error bodies are Electric's (`{"message": ...,
"errors": {<param>: [...]}}`), not the appliance's usual `{"error": ...}` form, because the clients parse these.

Reading: a response carries the log entries after the request's offset (a snapshot chunk, or up to
chunk_bytes of changes) and `electric-offset` = the offset of its last entry. It ends with an `up-to-date`
control message (and the `electric-up-to-date` header) when it reaches the end of a ready shape's log,
except for `offset=-1`, which never does (as in Electric, so that first response stays cacheable). A live
request at the end of the log waits for new entries up to the long-poll timeout and then answers 200 with
only `up-to-date`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from appliance import __version__
from appliance.secretfile import SecretFile
from appliance.sync import messages, subset
from appliance.sync.catalog import CatalogError, electric_schema, parse_columns, parse_relation
from appliance.sync.defaults import CHUNK_BYTES, LONG_POLL_TIMEOUT_MS
from appliance.sync.engine import PublicationError, ShapeRuntime, SyncEngine
from appliance.sync.offsets import BEFORE_ALL, SNAPSHOT_END, LogOffset, parse_request_offset
from appliance.sync.registry import ShapeDefinition
from appliance.sync.where import WhereError

log = logging.getLogger(__name__)

# Electric's defaults (the long-poll timeout, a setting, is in appliance/sync/defaults.py).
SSE_TIMEOUT_MS: Final = 60_000
SSE_KEEPALIVE_MS: Final = 21_000
MAX_AGE: Final = 60
STALE_AGE: Final = 300
STACK_READY_TIMEOUT: Final = 5.0
CURSOR_EPOCH: Final = 1728432000  # 2024-10-09T00:00:00Z, Electric's cursor epoch
# A where-clause is parsed by sync/where, which refuses more than MAX_WHERE_BYTES itself; this only bounds
# what a request may make the server hold before that.
MAX_QUERY_BYTES: Final = 64 * 1024
# A POST body holds a subset's where, order_by and params: the same bound as a query string.
MAX_BODY_BYTES: Final = MAX_QUERY_BYTES

ELECTRIC_HEADERS: Final = (
    "electric-cursor",
    "electric-handle",
    "electric-has-data",
    "electric-offset",
    "electric-schema",
    "electric-snapshot",
    "electric-up-to-date",
    "electric-internal-known-error",
    "retry-after",
)
_PARAM_KEY: Final = re.compile(r"params\[(\d+)\]")
_TRUE_FALSE: Final = {"true": True, "false": False}


@dataclass
class ApiSettings:
    secret: str | None
    # Where the secret came from, when it came from a file: followed across rotations (appliance.secretfile).
    secret_file: Path | None = None
    long_poll_timeout_ms: int = LONG_POLL_TIMEOUT_MS
    sse_timeout_ms: int = SSE_TIMEOUT_MS
    sse_keepalive_ms: int = SSE_KEEPALIVE_MS
    max_age: int = MAX_AGE
    stale_age: int = STALE_AGE
    chunk_bytes: int = CHUNK_BYTES
    # DELETE /v1/shape drops a shape under every client reading it: for tests only, as Electric's
    # ELECTRIC_ENABLE_INTEGRATION_TESTING (without it the method is 405). Deployed tenants never enable it.
    allow_delete: bool = False


class InvalidRequest(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(str(errors))
        self.errors = errors


@dataclass
class ShapeParams:
    definition: ShapeDefinition | None
    offset: LogOffset | Literal["now"]
    handle: str | None
    live: bool
    live_sse: bool


def next_cursor(long_poll_timeout_ms: int, previous: str | None, now: float | None = None) -> int:
    """Electric's `electric-cursor`: the next long-poll interval boundary since its epoch, in seconds; if that
    is not past the client's cursor, the client's plus 1..3600 (so a CDN never collapses two rounds)."""
    interval = long_poll_timeout_ms // 1000
    if interval == 0:
        return 0
    elapsed = int((time.time() if now is None else now) - CURSOR_EPOCH)
    upcoming = math.ceil(elapsed / interval) * interval
    previous_value = int(previous) if previous is not None and previous.isdigit() else 0
    if upcoming > previous_value:
        return upcoming
    return previous_value + random.randint(1, 3600)


def _bool_param(value: str | None) -> bool:
    # Electric: anything but "false" is true once present.
    return value is not None and value != "false"


def parse_shape_params(query: dict[str, str], *, for_delete: bool = False) -> ShapeParams:
    """Validate the query the way Electric's Api.Params does, stage by stage (a stage runs only when the
    previous ones passed); raises InvalidRequest with Electric's messages."""
    errors: dict[str, list[str]] = {}
    replica = query.get("replica", "default")
    if replica not in ("default", "full"):
        errors.setdefault("replica", []).append("is invalid")
    log_mode = query.get("log", "full")
    if log_mode not in ("full", "changes_only"):
        errors.setdefault("log", []).append("is invalid")
    columns: tuple[str, ...] | None = None
    if "columns" in query:
        try:
            columns = parse_columns(query["columns"])
        except ValueError as exc:
            errors.setdefault("columns", []).append(str(exc))
        else:
            if len(set(columns)) != len(columns):
                errors.setdefault("columns", []).append("must not list a column twice")
    live = _bool_param(query.get("live"))
    live_sse = _bool_param(query.get("live_sse", query.get("experimental_live_sse")))
    handle = query.get("handle") or None
    offset: LogOffset | Literal["now"] = BEFORE_ALL
    if not for_delete:
        if not query.get("offset"):
            errors.setdefault("offset", []).append("can't be blank")
        if errors:
            raise InvalidRequest(errors)
        try:
            offset = parse_request_offset(query["offset"])
        except ValueError:
            raise InvalidRequest({"offset": ["has invalid format"]}) from None
        if offset == BEFORE_ALL or offset == "now":
            handle = None  # Electric ignores a handle sent with -1 or now
        elif handle is None:
            raise InvalidRequest({"handle": ["can't be blank when offset != -1"]})
        if live and offset == BEFORE_ALL:
            raise InvalidRequest({"live": ["can't be true when offset == -1"]})
        if live and offset == "now":
            raise InvalidRequest({"live": ["can't be true when offset is 'now'"]})
        if live_sse and not live:
            raise InvalidRequest({"live_sse": ["can't be true unless live is also true"]})
    elif errors:
        raise InvalidRequest(errors)
    definition = None
    table = query.get("table")
    if table is None:
        if not for_delete:
            raise InvalidRequest({"table": ["can't be blank"]})
        if handle is None:
            raise InvalidRequest({"handle": ["can't be blank when shape definition is missing"]})
    else:
        try:
            schema, name = parse_relation(table)
        except ValueError as exc:
            raise InvalidRequest({"table": [str(exc)]}) from None
        params: dict[int, str] = {}
        for key, value in query.items():
            match = _PARAM_KEY.fullmatch(key)
            if match is not None:
                params[int(match.group(1))] = value
        if "params" in query:
            try:
                decoded = json.loads(query["params"])
                if not isinstance(decoded, dict):
                    raise ValueError
                params.update({int(k): str(v) for k, v in decoded.items()})
            except (ValueError, TypeError):
                raise InvalidRequest({"params": ["params must be a JSON object"]}) from None
        if not subset.numbered_without_gaps(params):
            raise InvalidRequest({"params": [subset.NOT_NUMBERED]})
        definition = ShapeDefinition(
            schema=schema,
            table=name,
            where=query.get("where"),
            params=tuple(params[i] for i in sorted(params)),
            columns=columns,
            replica=replica,  # type: ignore[arg-type]  # checked above
            log_mode=log_mode,  # type: ignore[arg-type]
        )
    return ShapeParams(definition, offset, handle, live, live_sse)


class ShapeApi:
    def __init__(self, engine: SyncEngine, settings: ApiSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._secret_file = SecretFile(settings.secret_file) if settings.secret_file and settings.secret else None

    # -- common headers ------------------------------------------------------------------------------------

    @staticmethod
    def _cors(request: Request, shape_route: bool) -> dict[str, str]:
        return {
            "access-control-allow-origin": request.headers.get("origin", "*"),
            "access-control-expose-headers": ",".join(ELECTRIC_HEADERS),
            "access-control-allow-methods": "GET, POST, HEAD, DELETE, OPTIONS" if shape_route else "GET, HEAD",
            "electric-server": f"appliance-sync/{__version__}",
        }

    def _error(
        self, request: Request, status: int, body: bytes, *, handle: str | None = None, retry_after: int | None = None
    ) -> Response:
        headers = self._cors(request, True)
        if status == 409:
            headers["cache-control"] = f"public, max-age={60 if handle else 1}, must-revalidate"
        elif request.method not in ("GET", "OPTIONS", "HEAD"):
            headers["cache-control"] = "no-cache"
        else:
            headers["cache-control"] = "no-store"
            headers["surrogate-control"] = "no-store"
        if handle is not None:
            headers["electric-handle"] = handle
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def _invalid(self, request: Request, errors: Mapping[str, Any]) -> Response:
        return self._error(request, 400, messages.invalid_request(errors))

    def _authorized(self, request: Request) -> bool:
        secret = self.settings.secret
        if secret is None:
            return True
        given = request.query_params.get("secret") or request.query_params.get("api_secret") or ""
        if self._secret_file is not None:
            return self._secret_file.accepts(given)
        return secrets.compare_digest(given.encode(), secret.encode())

    # -- routes --------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        status, code = ("active", 200) if self.engine.status == "active" else ("starting", 202)
        return Response(
            messages.encode({"status": status}),
            status_code=code,
            headers={**self._cors(request, False), "cache-control": "no-cache, no-store, must-revalidate"},
            media_type="application/json",
        )

    async def options(self, request: Request) -> Response:
        headers = self._cors(request, True)
        headers["access-control-max-age"] = "86400"
        headers["connection"] = "keep-alive"
        asked = request.headers.get("access-control-request-headers")
        if asked:
            allowed = [h.strip() for h in asked.split(",") if h.strip().lower() in ("if-none-match", "traceparent")]
            if allowed:
                headers["access-control-allow-headers"] = ",".join(allowed)
        return Response(b"", status_code=204, headers=headers)

    async def _query(self, request: Request) -> dict[str, str] | Response:
        if len(request.url.query.encode()) > MAX_QUERY_BYTES:
            return self._invalid(request, {"where": [f"the query string is longer than {MAX_QUERY_BYTES} bytes"]})
        if not self._authorized(request):
            headers = self._cors(request, True)
            headers["cache-control"] = "no-store"
            return Response(messages.UNAUTHORIZED_BODY, status_code=401, headers=headers, media_type="application/json")
        return dict(request.query_params)

    async def _ready(self, request: Request) -> Response | None:
        if self.engine.status == "active" or await self.engine.wait_active(STACK_READY_TIMEOUT):
            return None
        detail = self.engine.last_error or "still connecting to the database"
        return self._error(
            request, 503, messages.error_message(f"Stack not ready after 5000ms. Reason: {detail}"), retry_after=5
        )

    async def delete(self, request: Request) -> Response:
        query = await self._query(request)
        if isinstance(query, Response):
            return query
        try:
            params = parse_shape_params(query, for_delete=True)
        except InvalidRequest as exc:
            return self._invalid(request, exc.errors)
        not_ready = await self._ready(request)
        if not_ready is not None:
            return not_ready
        if params.definition is not None:
            runtime = self.engine.lookup(params.definition)
            if runtime is None:
                return self._error(request, 404, messages.error_message("No existing shape found"))
            if params.handle is not None and params.handle != runtime.handle:
                return self._error(request, 400, messages.error_message(messages.SHAPE_DEFINITION_MISMATCH))
            handle = runtime.handle
        else:
            assert params.handle is not None
            handle = params.handle
        if not await self.engine.delete(handle):
            return self._error(request, 404, messages.error_message("No existing shape found"))
        headers = self._cors(request, True)
        headers["cache-control"] = "no-cache"
        return Response(b"", status_code=202, headers=headers, media_type="application/json")

    async def post(self, request: Request) -> Response:
        """`POST /v1/shape`: a shape request whose subset parameters are in a JSON body (the client's
        `subsetMethod: 'POST'`, for subsets too long for a URL); the shape itself is in the query string."""
        query = await self._query(request)
        if isinstance(query, Response):
            return query
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            return self._error(request, 413, messages.encode({"error": "Request body too large"}))
        if not body.strip():
            decoded: Any = {}
        else:
            try:
                decoded = json.loads(body)
            except ValueError as exc:
                return self._error(request, 400, messages.encode(
                    {"error": "Invalid JSON in request body", "details": str(exc)}))
        if not isinstance(decoded, dict):
            return self._error(request, 400, messages.encode({"error": "Request body must be a JSON object"}))
        fields = {**subset.fields_from_query(query), **subset.fields_from_body(decoded)}
        return await self._shape_request(request, query, fields)

    async def get(self, request: Request) -> Response:
        query = await self._query(request)
        if isinstance(query, Response):
            return query
        return await self._shape_request(request, query, subset.fields_from_query(query))

    async def _shape_request(self, request: Request, query: dict[str, str], subset_fields: dict[str, Any]) -> Response:
        try:
            params = parse_shape_params(query)
        except InvalidRequest as exc:
            return self._invalid(request, exc.errors)
        wanted: subset.SubsetRequest | None = None
        if subset_fields:
            try:
                wanted = subset.parse_subset(subset_fields)
            except subset.SubsetInvalid as exc:
                return self._invalid(request, {"subset": exc.errors})
        not_ready = await self._ready(request)
        if not_ready is not None:
            return not_ready
        assert params.definition is not None
        try:
            runtime = self.engine.lookup(params.definition)
            if params.handle is not None and (runtime is None or runtime.handle != params.handle):
                # A stale or foreign handle: point the client at the shape for this definition (made now if
                # there is none), which it must fetch from scratch.
                runtime = await self.engine.get_or_create(params.definition)
                return self._error(request, 409, messages.MUST_REFETCH_BODY, handle=runtime.handle)
            if runtime is None:
                runtime = await self.engine.get_or_create(params.definition)
            await self.engine.ensure_snapshot(runtime)
        except CatalogError as exc:
            return self._invalid(request, {exc.field: [exc.message]})
        except WhereError as exc:
            return self._invalid(request, {exc.field: [str(exc)]})
        except PublicationError as exc:
            return self._invalid(request, {"table": [str(exc)]})
        except psycopg.OperationalError:
            return self._unreachable(request)
        if wanted is not None:
            return await self._serve_subset(request, params, runtime, wanted)
        return await self._serve(request, params, runtime)

    def _unreachable(self, request: Request) -> Response:
        # Electric's answer while the database cannot be reached to verify a shape: try again soon.
        message = "Cannot connect to the database to verify the shape. Please try again later."
        return self._error(request, 503, messages.error_message(message), retry_after=1)

    async def _serve_subset(
        self, request: Request, params: ShapeParams, runtime: ShapeRuntime, wanted: subset.SubsetRequest
    ) -> Response:
        """`{"metadata": ..., "data": [...]}`: the subset's rows from one snapshot (never the log, so live
        flags do not apply), with the shape's handle, schema and the offset to resume the log from."""
        deadline = time.monotonic() + self.settings.long_poll_timeout_ms / 1000
        while not runtime.ready:  # the shape's own snapshot first: the resume offset must be after it
            if runtime.gone or runtime.error is not None:
                return self._gone(request, runtime)
            if time.monotonic() > deadline:
                return self._error(request, 503, messages.error_message("Snapshot not ready yet"), retry_after=1)
            await runtime.wait(runtime.log.visible_offset, max(0.05, deadline - time.monotonic()))
        try:
            result, resume = await self.engine.query_subset(runtime, wanted)
        except subset.SubsetInvalid as exc:
            return self._invalid(request, {"subset": exc.errors})
        except psycopg.errors.DataError as exc:
            # A constant Postgres could not read as its column's type (an enum label, say): the client's.
            return self._invalid(request, {"subset": {"where": [exc.diag.message_primary or str(exc)]}})
        except psycopg.OperationalError:
            return self._unreachable(request)
        headers = self._cors(request, True)
        headers["cache-control"] = "no-cache"
        headers["electric-snapshot"] = "true"
        headers["electric-handle"] = runtime.handle
        # The client moves its stream to this offset (requestSnapshot in changes_only mode). From `now` (or
        # -1) that is the log's end before the snapshot, so nothing between the two is missed; from a real
        # offset it stays the client's own: a later one would skip changes the client has not read (a delete
        # of a row it holds that the snapshot, taken after it, no longer returns).
        client_at = params.offset
        keep = isinstance(client_at, LogOffset) and client_at != BEFORE_ALL and client_at <= resume
        headers["electric-offset"] = str(client_at if keep else resume)
        if runtime.compiled is not None:
            headers["electric-schema"] = _schema_header(runtime)
        body = b"".join((b'{"metadata":', messages.encode(result.metadata), b',"data":',
                         messages.join_messages(result.data), b"}"))
        return Response(body, headers=headers, media_type="application/json")

    # -- serving a shape -----------------------------------------------------------------------------------

    def _gone(self, request: Request, runtime: ShapeRuntime) -> Response:
        if runtime.error is not None:
            return self._error(request, 503, messages.error_message(str(runtime.error)), retry_after=1)
        successor = self.engine.lookup(runtime.definition)
        return self._error(
            request, 409, messages.MUST_REFETCH_BODY, handle=successor.handle if successor is not None else None
        )

    def _headers(
        self,
        request: Request,
        params: ShapeParams,
        runtime: ShapeRuntime,
        offset: LogOffset,
        *,
        up_to_date: bool,
        no_changes: bool,
    ) -> dict[str, str]:
        headers = self._cors(request, True)
        if params.offset == BEFORE_ALL:
            headers["cache-control"] = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        elif params.live and params.live_sse:
            headers["cache-control"] = f"public, max-age={max(1, self.settings.sse_timeout_ms // 1000 - 1)}"
        elif params.live:
            headers["cache-control"] = "public, max-age=5, stale-while-revalidate=5"
        else:
            headers["cache-control"] = (
                f"public, max-age={self.settings.max_age}, stale-while-revalidate={self.settings.stale_age}"
            )
        if params.live:
            headers["electric-cursor"] = str(
                next_cursor(self.settings.long_poll_timeout_ms, request.query_params.get("cursor"))
            )
        etag = f"{runtime.handle}:{params.offset}:{offset}"
        if no_changes:
            etag += f":{time.monotonic_ns()}"
        headers["etag"] = f'"{etag}"'
        headers["electric-handle"] = runtime.handle
        if not params.live and runtime.compiled is not None:
            headers["electric-schema"] = _schema_header(runtime)
        if up_to_date:
            headers["electric-up-to-date"] = ""
        headers["electric-has-data"] = "false" if no_changes else "true"
        headers["electric-offset"] = str(offset)
        return headers

    def _not_modified(self, request: Request, headers: dict[str, str]) -> Response | None:
        wanted = request.headers.get("if-none-match")
        if wanted is None:
            return None
        tags = {tag.strip().strip('"') for tag in wanted.split(",")}
        if headers["etag"].strip('"') in tags:
            return Response(b"", status_code=304, headers=headers)
        return None

    def _up_to_date_lsn(self, params: ShapeParams, end: LogOffset) -> int:
        tx = max(end.tx, 0)
        return tx if params.live else max(self.engine.last_lsn, tx)

    async def _serve(self, request: Request, params: ShapeParams, runtime: ShapeRuntime) -> Response:
        deadline = time.monotonic() + self.settings.long_poll_timeout_ms / 1000
        if params.offset == "now":
            while not runtime.ready:
                if runtime.gone or runtime.error is not None:
                    return self._gone(request, runtime)
                await runtime.wait(runtime.log.visible_offset, max(0.05, deadline - time.monotonic()))
                if time.monotonic() > deadline and not runtime.ready:
                    return self._error(request, 503, messages.error_message("Snapshot not ready yet"), retry_after=1)
            end = runtime.log.visible_offset
            headers = self._headers(request, params, runtime, end, up_to_date=True, no_changes=True)
            body = messages.join_messages([messages.encode(messages.up_to_date(self.engine.last_lsn))])
            return Response(body, headers=headers, media_type="application/json")

        offset = params.offset
        assert isinstance(offset, LogOffset)
        out_of_bounds_deadline: float | None = None
        if params.live and params.live_sse:
            return self._sse(request, params, runtime, offset)
        while True:
            if runtime.gone or runtime.error is not None:
                return self._gone(request, runtime)
            visible = runtime.log.visible_offset
            after = offset
            if offset == SNAPSHOT_END and runtime.ready:
                # Not an offset this server hands out, but Electric's clients may hold one from an Electric
                # server: it means "everything after the snapshot".
                after = _last_snapshot_entry(runtime)
            elif offset > visible and not (offset.is_snapshot and not runtime.ready):
                # Ahead of the log: Electric waits half a long poll in case the client saw a newer server
                # instance, then refuses it.
                if out_of_bounds_deadline is None:
                    out_of_bounds_deadline = time.monotonic() + self.settings.long_poll_timeout_ms / 2000
                remaining = out_of_bounds_deadline - time.monotonic()
                if remaining <= 0:
                    return self._invalid(request, {"offset": ["out of bounds for this shape"]})
                await runtime.wait(visible, remaining)
                continue
            read = await _read(runtime, after, self.settings.chunk_bytes)
            if read is None:
                return self._gone(request, runtime)
            if read.messages:
                reached_end = runtime.ready and read.last_offset >= runtime.log.visible_offset
                up_to_date = reached_end and offset != BEFORE_ALL
                chunks = list(read.messages)
                if up_to_date:
                    chunks.append(messages.encode(messages.up_to_date(self._up_to_date_lsn(params, read.last_offset))))
                headers = self._headers(
                    request, params, runtime, read.last_offset, up_to_date=up_to_date, no_changes=False
                )
                return self._not_modified(request, headers) or Response(
                    messages.join_messages(chunks), headers=headers, media_type="application/json"
                )
            if not runtime.ready:
                await runtime.wait(after, 1.0)  # the snapshot is still being written
                continue
            if not params.live:
                headers = self._headers(request, params, runtime, offset, up_to_date=True, no_changes=False)
                body = messages.join_messages(
                    [messages.encode(messages.up_to_date(self._up_to_date_lsn(params, offset)))]
                )
                return self._not_modified(request, headers) or Response(
                    body, headers=headers, media_type="application/json"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.engine.status == "stopping":
                headers = self._headers(request, params, runtime, offset, up_to_date=True, no_changes=True)
                body = messages.join_messages([messages.encode(messages.up_to_date(self.engine.last_lsn))])
                return Response(body, headers=headers, media_type="application/json")
            await runtime.wait(after, remaining)
            if await request.is_disconnected():
                return Response(b"", status_code=499)

    def _sse(self, request: Request, params: ShapeParams, runtime: ShapeRuntime, offset: LogOffset) -> Response:
        headers = self._headers(request, params, runtime, offset, up_to_date=False, no_changes=False)
        headers["connection"] = "keep-alive"
        settings = self.settings

        async def events() -> AsyncIterator[bytes]:
            since = offset
            started = time.monotonic()
            last_sent = started
            deadline = started + settings.sse_timeout_ms / 1000
            keepalive = settings.sse_keepalive_ms / 1000
            while True:
                now = time.monotonic()
                if now >= deadline or runtime.gone or runtime.error is not None or self.engine.status == "stopping":
                    return
                read = await _read(runtime, since, settings.chunk_bytes)
                if read is None:
                    return
                if read.messages:
                    out: list[bytes] = []
                    for entry in read.messages:
                        for message in json.loads(b"[" + entry + b"]"):
                            out.append(b"data: " + messages.encode(message) + b"\n\n")
                    # The client resumes SSE at `<global_last_seen_lsn>_0`, so name a position past every op
                    # of the last transaction sent (the next transaction's commit LSN is larger still).
                    lsn = read.last_offset.tx + 1 if read.last_offset.is_live else self.engine.last_lsn
                    out.append(b"data: " + messages.encode(messages.up_to_date(lsn)) + b"\n\n")
                    since = read.last_offset
                    last_sent = time.monotonic()
                    yield b"".join(out)
                    continue
                if now - last_sent >= keepalive:
                    last_sent = now
                    yield b": keep-alive\n\n"
                    continue
                await runtime.wait(since, min(deadline - now, keepalive - (now - last_sent)))

        return StreamingResponse(events(), headers=headers, media_type="text/event-stream")

    def app(self) -> Starlette:
        engine = self.engine

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            await engine.start()
            try:
                yield
            finally:
                await engine.stop()

        async def not_found(request: Request) -> Response:
            return Response(b"Not found", status_code=404, headers=self._cors(request, False))

        routes = [
            Route("/v1/shape", self.get, methods=["GET", "HEAD"]),
            Route("/v1/shape", self.post, methods=["POST"]),
            Route("/v1/shape", self.options, methods=["OPTIONS"]),
            Route("/v1/health", self.health, methods=["GET", "HEAD"]),
        ]
        if self.settings.allow_delete:
            routes.append(Route("/v1/shape", self.delete, methods=["DELETE"]))
        app = Starlette(routes=routes, lifespan=lifespan)
        app.add_exception_handler(404, _wrap(not_found))
        app.add_exception_handler(Exception, _wrap(self._internal_error))
        return app

    async def _internal_error(self, request: Request) -> Response:
        return self._error(request, 500, messages.encode({"error": "Internal server error"}))


def _wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def wrapped(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, Exception) or getattr(exc, "status_code", 500) >= 500:
            log.exception("request failed", exc_info=exc)
        return await handler(request)

    return wrapped


async def _read(runtime: ShapeRuntime, after: LogOffset, chunk_bytes: int) -> Any:
    """The log entries after `after`, or None when the shape was closed under us.

    From within the snapshot a response is exactly one chunk (one entry), as in Electric: those responses
    are cached for a week, so they must not depend on how far the live log has grown since. After the
    snapshot's last chunk come live changes, read like any others (up to `chunk_bytes`)."""

    def read() -> Any:
        if after.tx > 0:
            return runtime.log.read(after, chunk_bytes)
        first = runtime.log.read(after, 1)
        if first.messages and first.last_offset.is_live:
            return runtime.log.read(after, chunk_bytes)
        return first

    try:
        # Blocking positional reads of bounded size: off the event loop.
        return await asyncio.to_thread(read)
    except Exception:
        if runtime.gone or runtime.log.closed:
            return None
        raise


def _schema_header(runtime: ShapeRuntime) -> str:
    assert runtime.compiled is not None
    return json.dumps(electric_schema(runtime.compiled.table, runtime.compiled.columns), separators=(",", ":"))


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is longer than `limit` (read no further: nothing is buffered
    beyond the limit, whatever the client declared)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _last_snapshot_entry(runtime: ShapeRuntime) -> LogOffset:
    """The offset of the snapshot's last chunk: reading after it gives the live changes."""
    read = runtime.log.read(BEFORE_ALL, 1)
    offset = read.last_offset
    while True:
        following = runtime.log.read(offset, 1)
        if not following.messages or not following.last_offset.is_snapshot:
            return offset
        offset = following.last_offset


def create_app(engine: SyncEngine, settings: ApiSettings) -> Starlette:
    return ShapeApi(engine, settings).app()
