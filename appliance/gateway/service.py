"""The gateway's supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.services import ServiceSpec, venv_bin


def gateway_service(tenant: TenantConfig) -> ServiceSpec:
    return ServiceSpec(
        name=f"appliance-{tenant.id}-gateway",
        component="gateway",
        command=(venv_bin(tenant, "appliance"), "gateway", "serve", "--tenant", tenant.id),
        user=tenant.user,
        working_dir=tenant.root,
        log_file=tenant.log_file("gateway"),
        port=tenant.port("gateway"),
        probe="http",
        probe_path="/healthz",
        # Uvicorn's graceful shutdown: finish in-flight requests, flush the audit queue, close connections.
        stop_signal="TERM",
        stop_wait_s=30,
        tenant=tenant.id,
    )
