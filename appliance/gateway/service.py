"""The gateway's supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from appliance.config import TenantConfig
from appliance.servicespec import ServiceSpec, appliance_service


def gateway_service(tenant: TenantConfig) -> ServiceSpec:
    # SIGTERM is uvicorn's graceful shutdown: finish in-flight requests, flush the audit queue, close connections.
    spec = appliance_service(tenant, "gateway", "serve", port=tenant.port("gateway"), probe="http",
                             probe_path="/healthz", stop_wait_s=30)
    # The gateway reads its settings once, at start: a change of them (e.g. cors_origins), or the front door
    # being switched on or off (its socket), changes its service definition, so the deploy restarts it, and only it.
    read_at_start = (tenant.gateway.model_dump_json() + tenant.identity.model_dump_json()
                     + f"|frontdoor={tenant.frontdoor.enabled}")
    settings = hashlib.sha256(read_at_start.encode()).hexdigest()[:16]
    return replace(spec, environment={**spec.environment, "APPLIANCE_GATEWAY_SETTINGS": settings})
