"""The tenant's sync engine: the embedded engine under the service manager, or the official Electric image
as a container where a Docker engine answers (`sync.runtime`, resolved per host by the plan)."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import host_step
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName


@deploy("Tenant sync engine")
def tenant_sync(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    if tenant.sync.runtime is SyncRuntime.electric:
        host_step(name=f"Electric container of {tenant.id}", config=config, tenant=tenant, step="sync-container",
                  fact="sync_container_ok", current=f"Electric container of {tenant.id} runs its current spec")
        return
    install_components(config, manager, tenant, "sync")
