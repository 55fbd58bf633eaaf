"""The appliance's own per-tenant services (gateway, and the agent workers, audit shipper and backup
scheduler as they exist): each a supervised process from its ServiceSpec, started after the data plane."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import host_step
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName

# Started together once the tenant's Postgres is ready, and waited for once: none of them needs another of them
# to start (a fresh tenant's deploy is seconds shorter than one start-and-wait each). The sync engine is among
# them unless it runs as the official image's container (appliance.deploys.sync); the identity provider where
# the tenant runs its own. The audit shipper and the backup scheduler come later (appliance.deploys.backup):
# they need the tenant's buckets.
APPLICATION_COMPONENTS = ("sync", "streams", "identity", "gateway", "agents")


@deploy("Tenant services")
def tenant_application(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    # The gateway reads an external issuer's client secret at each login, from the tenant's copy.
    host_step(name=f"Client secrets of {tenant.id}'s OIDC issuers", config=config, tenant=tenant,
              step="identity-issuers", fact="identity_issuers_ok",
              current=f"client secrets of {tenant.id}'s issuers are current")
    install_components(config, manager, tenant, *APPLICATION_COMPONENTS)
