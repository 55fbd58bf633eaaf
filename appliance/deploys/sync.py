"""The tenant's sync engine: the embedded engine under the service manager, or the official Electric image
as a container where a Docker engine answers (`sync.runtime`, resolved per host by the plan)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy, operation

from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import appliance_facts
from appliance.deploys.services import install_services
from appliance.services import tenant_services
from appliance.supervision import ManagerName


@operation()
def electric_container(config: HostConfig, tenant: TenantConfig):
    if appliance_facts(config, tenant.id).get("sync_container_ok"):
        host.noop(f"Electric container of {tenant.id} runs its current spec")
        return
    appliance = config.common.install_root / "venv" / "bin" / "appliance"
    yield f"{appliance} host sync-container {tenant.id}"


@deploy("Tenant sync engine")
def tenant_sync(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    if tenant.sync.runtime is SyncRuntime.electric:
        electric_container(name=f"Electric container of {tenant.id}", config=config, tenant=tenant)
        return
    specs = [s for s in tenant_services(tenant, config.source_digest) if s.component == "sync"]
    install_services(config, manager, specs, tenant=tenant.id)
