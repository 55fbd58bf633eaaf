"""The tenant gateway's FastAPI application: `create_app(tenant)`.

Run it with `appliance gateway serve --tenant <id>` (appliance/cli/gateway.py), which the tenant's service spec
(appliance/gateway/service.py) starts as the tenant's OS user.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware

from appliance.config import TenantConfig, load_tenant
from appliance.gateway.api.hot import HotPaths
from appliance.gateway.api.routes import (
    agents,
    api_keys,
    auth,
    configs,
    environments,
    health,
    houses,
    invites,
    login,
    me,
    members,
    secrets,
    shapes,
    threads,
)
from appliance.gateway.core.errors import ErrorBody, install_error_handlers
from appliance.gateway.core.middleware import (
    CORS_ALLOWED_HEADERS,
    CORS_ALLOWED_METHODS,
    CORS_MAX_AGE_S,
    EXPOSED_HEADERS,
    NO_TELEMETRY,
    BodySizeLimit,
    FrontDoorClient,
)
from appliance.gateway.runtime import Gateway

TENANT_ENV = "APPLIANCE_GATEWAY_TENANT"


def create_app(tenant: TenantConfig) -> FastAPI:
    gateway = Gateway(tenant)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title=f"Tenant gateway ({tenant.id})",
        version="1",
        description="The only door to this tenant's data: auth, shapes, writes, thread streams and entries.",
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    # Routes are matched in the order they are included, each a regular expression tried in turn: the reads every
    # live client repeats (shapes, thread streams) go first, so they are found after one or two tries, not twenty.
    for module in (shapes, threads, health, auth, login, me, houses, members, environments, agents, configs, secrets,
                   invites, api_keys):
        app.include_router(module.router)
    # Innermost of the app's middleware: the hot requests, answered without the router (appliance/gateway/api/hot.py).
    app.add_middleware(HotPaths, gateway=gateway, handlers=app.exception_handlers)
    app.add_middleware(BodySizeLimit, max_bytes=tenant.gateway.max_body_bytes)
    if tenant.gateway.cors_origins:
        # Credentials allowed (bearer tokens, and the login cookie), so origins are listed, never '*'.
        app.add_middleware(CORSMiddleware, allow_origins=list(tenant.gateway.cors_origins),
                           allow_methods=list(CORS_ALLOWED_METHODS), allow_headers=list(CORS_ALLOWED_HEADERS),
                           expose_headers=list(EXPOSED_HEADERS), allow_credentials=True, max_age=CORS_MAX_AGE_S)
    # Outermost: everything inside sees the real client of a request the front door forwarded.
    app.add_middleware(FrontDoorClient)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _errors_in_openapi(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _errors_in_openapi(schema: dict[str, Any]) -> None:
    """Validation errors answer with the error body too; say so instead of FastAPI's default model."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}"))
    for name, definition in ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").get(
            "$defs", {}).items():
        components.setdefault(name, definition)
    components["ErrorBody"].pop("$defs", None)
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "invalid request",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the tenant named by $APPLIANCE_GATEWAY_TENANT in this host's config."""
    tenant_id = os.environ[TENANT_ENV]
    return create_app(load_tenant(tenant_id)[1])
