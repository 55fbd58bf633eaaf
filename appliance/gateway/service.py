"""The gateway's supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.services import ServiceSpec, appliance_service


def gateway_service(tenant: TenantConfig) -> ServiceSpec:
    # SIGTERM is uvicorn's graceful shutdown: finish in-flight requests, flush the audit queue, close connections.
    return appliance_service(tenant, "gateway", "serve", port=tenant.port("gateway"), probe="http",
                             probe_path="/healthz", stop_wait_s=30)
