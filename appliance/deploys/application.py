"""The appliance's own per-tenant services (gateway, and the agent workers, audit shipper and backup
scheduler as they exist): each a supervised process from its ServiceSpec, started after the data plane."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName

# The audit shipper and the backup scheduler come later (appliance.deploys.backup): they need the tenant's
# buckets.
APPLICATION_COMPONENTS = ("gateway", "agents")


@deploy("Tenant application services")
def tenant_application(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    install_components(config, manager, tenant, *APPLICATION_COMPONENTS)
