"""The agent workers' supervised service for one tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.services import ServiceSpec, venv_bin


def agents_service(tenant: TenantConfig, source_digest: str = "") -> ServiceSpec:
    return ServiceSpec(
        name=f"appliance-{tenant.id}-agents",
        component="agents",
        command=(venv_bin(tenant, "appliance"), "agents", "serve", "--tenant", tenant.id),
        user=tenant.user,
        working_dir=tenant.root,
        log_file=tenant.log_file("agents"),
        port=tenant.port("agents"),
        probe="http",
        probe_path="/healthz",
        # New sources change the unit and restart the worker (as for the other services running our code).
        environment={"APPLIANCE_SOURCE_DIGEST": source_digest} if source_digest else {},
        # SIGTERM: uvicorn stops accepting, running handlers are cancelled and resumed at the next start
        # (their activations are in the agents' inboxes), so a short wait is enough.
        stop_signal="TERM",
        stop_wait_s=30,
        tenant=tenant.id,
    )
