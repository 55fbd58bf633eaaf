"""The agent workers' supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from dataclasses import replace

from appliance.config import TenantConfig
from appliance.servicespec import ServiceSpec, appliance_service


def agents_service(tenant: TenantConfig) -> ServiceSpec:
    # SIGTERM: uvicorn stops accepting, running handlers are cancelled and resumed at the next start (their
    # activations are in the agents' inboxes), so a short wait is enough.
    spec = appliance_service(tenant, "agents", "serve", port=tenant.port("agents"), probe="http",
                             probe_path="/healthz", stop_wait_s=30)
    # Its own user (it runs third-party handlers: appliance.host.users) works in its own dir, sharing what it writes
    # with its group (the tenant's user, whose backups read it).
    return replace(spec, working_dir=tenant.agents_data, umask="007")
