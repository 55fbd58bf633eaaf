"""The agent workers' HTTP face: `POST /activate/{agent_id}` for the tenant's gateway; `GET /healthz`
(liveness, what the service manager probes) and `GET /readyz` (the streams server and the agents dir).

Only the tenant's gateway may activate: it sends `Authorization: Bearer <agents_internal_token>`, compared in
constant time with the tenant's secret file, followed across rotations (appliance.secretfile): a rotated token
needs no restart. The check
comes before the body is read or parsed, so an unauthenticated caller learns nothing about the body's format.

Answers (appliance/gateway/ACTIVATION.md): 202 once the activation is committed to the agent's inbox (the
handler runs after); 200 for a duplicate delivery; 401 without the credential; 400/422 for a body that is not an
activation or names another agent, and 413 for an oversized body (the gateway gives those up); 429 when the
agent's queue is full (the gateway retries later).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from appliance.agents.models import ActivationRequest
from appliance.agents.worker import Worker, WorkerBusy
from appliance.config import TenantConfig, load_tenant
from appliance.gateway.core.errors import error_response, install_error_handlers
from appliance.gateway.core.middleware import NO_TELEMETRY, BodySizeLimit
from appliance.secretfile import SecretFile
from appliance.secrets import AGENTS_TOKEN

log = logging.getLogger("appliance.agents")

TENANT_ENV: Final = "APPLIANCE_AGENTS_TENANT"


def max_activation_bytes(tenant: TenantConfig) -> int:
    """An activation carries one agent row (at most one gateway request body) and the house's configs (each at
    most one); a generous multiple leaves room for many configs while bounding what a caller can make us read."""
    return 16 * tenant.gateway.max_body_bytes


def _internal_token(tenant: TenantConfig) -> SecretFile | None:
    """The credential the gateway presents, followed across rotations (appliance.secretfile); None when
    unreadable, which refuses every activation."""
    try:
        return SecretFile(tenant.secret_path(AGENTS_TOKEN))
    except OSError:
        log.error("the internal token's secret file is unreadable: refusing activations")
        return None


def _bearer_matches(header: str | None, expected: SecretFile | None) -> bool:
    scheme, _, credential = (header or "").partition(" ")
    if expected is None or scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110)
        return False
    return expected.accepts(credential.strip())


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")  # never the input: it may be large or sensitive
    return "; ".join(parts)


def create_app(tenant: TenantConfig, worker: Worker | None = None) -> FastAPI:
    worker = worker or Worker(tenant)
    internal_token = _internal_token(tenant)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(title=f"Agent workers ({tenant.id})", version="1", lifespan=lifespan,
                  telemetry=NO_TELEMETRY, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_activation_bytes(tenant))

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        """Liveness (what the service manager probes): the process answers."""
        return {"status": "ok", **worker.stats()}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: the streams server answers and the agents dir is writable."""
        checks = {"streams": await worker.streams.reachable(),
                  "agents_dir": os.access(tenant.agents_data, os.W_OK | os.X_OK)}
        if all(checks.values()):
            return JSONResponse({"status": "ready", "checks": checks})
        down = ", ".join(name for name, ok in checks.items() if not ok)
        return JSONResponse({"error": {"code": "not_ready", "message": f"unavailable: {down}"}, "checks": checks},
                            status_code=503)

    @app.post("/activate/{agent_id}")
    async def activate(agent_id: str, request: Request) -> JSONResponse:
        if not _bearer_matches(request.headers.get("authorization"), internal_token):
            return error_response(401, "unauthorized", "the tenant's internal credential is required",
                                  {"WWW-Authenticate": "Bearer"})
        try:
            wanted = uuid.UUID(agent_id)
        except ValueError:
            return error_response(404, "not_found", "no such agent")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return error_response(415, "unsupported_media_type", "activations are application/json")
        body = await request.body()
        try:
            activation = ActivationRequest.model_validate_json(body)
        except ValidationError as exc:
            return error_response(422, "invalid_request", _validation_message(exc))
        if activation.agent.id != wanted:
            return error_response(400, "bad_request", "the body's agent is not the agent of the path")
        try:
            outcome = await worker.accept(activation)
        except WorkerBusy:
            return error_response(429, "busy", "this agent has too many unfinished activations; retry later",
                                  {"Retry-After": "5"})
        body_out = {"status": "duplicate" if outcome.duplicate else "accepted", "state": outcome.state,
                    "reply_id": str(activation.reply_id())}
        if outcome.outcome:
            body_out["outcome"] = outcome.outcome
        return JSONResponse(body_out, status_code=200 if outcome.duplicate else 202)

    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn: the tenant named by $APPLIANCE_AGENTS_TENANT in this host's config."""
    return create_app(load_tenant(os.environ[TENANT_ENV])[1])
