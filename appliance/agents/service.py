"""The agent workers' supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.servicespec import ServiceSpec, appliance_service


def agents_service(tenant: TenantConfig) -> ServiceSpec:
    # SIGTERM: uvicorn stops accepting, running handlers are cancelled and resumed at the next start (their
    # activations are in the agents' inboxes), so a short wait is enough.
    return appliance_service(tenant, "agents", "serve", port=tenant.port("agents"), probe="http",
                             probe_path="/healthz", stop_wait_s=30)
