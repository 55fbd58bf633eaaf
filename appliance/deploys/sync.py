"""The tenant's sync engine as the official Electric image, a container, where a Docker engine answers
(`sync.runtime`, resolved per host by the plan); the embedded engine is one of the tenant's services
(appliance.deploys.application)."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import host_step


@deploy("Tenant sync engine")
def tenant_sync(config: HostConfig, tenant: TenantConfig) -> None:
    if tenant.sync.runtime is SyncRuntime.electric:
        host_step(name=f"Electric container of {tenant.id}", config=config, tenant=tenant, step="sync-container",
                  fact="sync_container_ok", current=f"Electric container of {tenant.id} runs its current spec")
