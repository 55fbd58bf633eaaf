"""A tenant's substrate: its OS user, its 0700 root directory and its secrets. Then every component."""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import server

from appliance import desired
from appliance.config import HostConfig, TenantConfig
from appliance.deploys.application import tenant_application
from appliance.deploys.facts import appliance_facts, host_command, host_step, tenants_with_users
from appliance.deploys.managed import apply_desired, os_user
from appliance.deploys.postgres import tenant_postgres
from appliance.deploys.sync import tenant_sync
from appliance.supervision import ManagerName


@operation()
def tenant_secrets(config: HostConfig, tenant: TenantConfig):
    """Generate the tenant's secrets on the host the first time; they are reused on every redeploy."""
    missing = appliance_facts(config, tenant.id).get("secrets_missing", ["*"])
    if not missing:
        host.noop(f"secrets of {tenant.id} exist")
        return
    yield host_command(config, "secrets", tenant.id)


@deploy("Tenant substrate")
def tenant_substrate(config: HostConfig, tenant: TenantConfig) -> None:
    os_user(name=f"OS user {tenant.user}", user=tenant.user, home=str(tenant.root))
    # The agents' own user before the directories that name it.
    host_step(name=f"OS users inside {tenant.id}", config=config, tenant=tenant, step="users", fact="users_ok",
              current=f"{tenant.agents_user} and its files are as they should be")
    apply_desired(desired.tenant_substrate(tenant))
    tenant_secrets(name=f"Secrets of {tenant.id}", config=config, tenant=tenant)
    # What the tenant's own services read (they cannot read host.json): a tenant new to this host gets it here,
    # once its user exists; the others got it in the bootstrap.
    if tenant.id not in tenants_with_users(config):
        apply_desired([desired.tenant_view(config, tenant),
                       *(desired.tenant_upstream_dirs(config, tenant) if config.runs_frontdoor else [])])


@deploy("Tenant stack")
def tenant_stack(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    """Everything one tenant runs, on its own substrate."""
    tenant_substrate(config=config, tenant=tenant)
    tenant_postgres(config=config, tenant=tenant, manager=manager)
    tenant_sync(config=config, tenant=tenant)
    tenant_application(config=config, tenant=tenant, manager=manager)


@deploy("Tenant audit trail")
def record_deploy(config: HostConfig, tenant: TenantConfig) -> None:
    """A deploy that changed what the host runs (new sources, new resolved config) is an operator action in
    every tenant's audit trail; a no-op redeploy records nothing."""
    from appliance.deploys.bootstrap import DEPLOY_CHANGES

    detail = json.dumps({"host": config.name, "source_digest": config.source_digest}, sort_keys=True)
    server.shell(
        name=f"Record the deploy in {tenant.id}'s audit trail",
        commands=[host_command(config, "record-deploy", tenant.id, shlex.quote(detail))],
        _if=lambda: any(op.did_change() for op in DEPLOY_CHANGES.get(host.name, [])),
    )
