"""One error shape for every failure: `{"error": {"code": "...", "message": "..."}}`, never a stack trace.

Codes are stable identifiers clients may branch on; messages are for humans and never carry secrets, SQL or
another house's data.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from appliance.gateway.core.db import DatabaseUnavailable

log = logging.getLogger("appliance.gateway")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def not_found(what: str = "resource") -> ApiError:
    # One message for "does not exist" and "not yours": the answer must not tell them apart.
    del what
    return ApiError(404, "not_found", "not found")


_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "invalid_request", 429: "rate_limited",
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        # The message only, never the input (it may be large or hold a secret the client meant for a field).
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# SQLSTATE classes answered the way psycopg's exception classes were: integrity (23) a conflict, data (22) a bad
# value; connection (08), authorization (28), transaction rollback (40: deadlock, serialization), insufficient
# resources (53), program limits (54), object state (55: lock not available), operator intervention (57: admin
# shutdown, cannot connect now) and system errors (58) an outage to retry (psycopg's OperationalError).
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "40", "53", "54", "55", "57", "58"})


def _unavailable(exc: BaseException) -> JSONResponse:
    log.warning("database unavailable: %s", type(exc).__name__)
    return error_response(503, "unavailable", "the database is unavailable; retry later", {"Retry-After": "1"})


def database_error_response(exc: asyncpg.PostgresError) -> JSONResponse | None:
    """The answer to a Postgres error a route let through, or None for an internal error (500)."""
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if sqlstate.startswith("23"):
        # A race the route's own checks could not see (two creates of one name at once): a conflict, not a 500.
        return error_response(409, "conflict", "the change conflicts with existing data")
    if sqlstate.startswith("22"):
        return error_response(400, "bad_request", "a value is out of range or malformed")
    if sqlstate[:2] in _UNAVAILABLE_CLASSES:
        return _unavailable(exc)
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(asyncpg.PostgresError)
    async def _postgres_error(request: Request, exc: asyncpg.PostgresError) -> JSONResponse:
        answer = database_error_response(exc)
        if answer is None:
            return await _unexpected(request, exc)
        return answer

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(asyncpg.exceptions.ConnectionDoesNotExistError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        return _unavailable(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The client learns nothing; the log gets the traceback (our exceptions never carry secret values).
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal error")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error statuses, all with the error body."""
    return {status: {"model": ErrorBody, "description": _STATUS_CODES.get(status, "error")} for status in statuses}
