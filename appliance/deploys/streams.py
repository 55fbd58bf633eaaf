"""The tenant's Durable Streams server: its own process, file-backed in the tenant dir, on loopback."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName


@deploy("Tenant streams")
def tenant_streams(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    install_components(config, manager, tenant, "streams")
