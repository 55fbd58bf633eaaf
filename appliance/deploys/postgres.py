"""The tenant's own Postgres cluster: initdb as the tenant user, config, supervised postmaster, roles."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from appliance import desired
from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import host_command, host_step
from appliance.deploys.managed import apply_desired
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName


def _docker_bridge_gateway() -> str:
    from pyinfra.facts.server import Command

    gateway = host.get_fact(
        Command, "docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true"
    )
    if not gateway:
        raise ValueError(f"host {host.name}: sync runtime electric, but the Docker bridge network has no gateway")
    return str(gateway).strip()


@deploy("Tenant postgres")
def tenant_postgres(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"pgBackRest config and wrapper of {tenant.id}", config=config, tenant=tenant,
              step="backup-files", fact="backup_files_ok", current=f"pgBackRest files of {tenant.id} are current")
    fresh = host_step(name=f"Postgres cluster of {tenant.id} (initdb)", config=config, tenant=tenant,
                      step="postgres-init", fact="pg_initialized", current=f"cluster of {tenant.id} exists")
    conf_ops = apply_desired(desired.postgres(
        tenant, _docker_bridge_gateway() if tenant.sync.runtime is SyncRuntime.electric else ""))
    apply, *_ = install_components(config, manager, tenant, "postgres")
    server.shell(
        name=f"Reload postgres of {tenant.id} (restart only if a changed setting needs it)",
        commands=[host_command(config, "postgres-reload", tenant.id)],
        _if=lambda: not fresh.did_change() and not apply.did_change() and any(op.did_change() for op in conf_ops),
    )
    host_step(name=f"Postgres roles and database of {tenant.id}", config=config, tenant=tenant,
              step="postgres-roles", fact="pg_roles_ok", current=f"roles of {tenant.id} log in with their secrets")
    host_step(name=f"Schema migrations and sync publication of {tenant.id}", config=config, tenant=tenant,
              step="schema", fact="schema_current",
              current=f"schema of {tenant.id} is current, publication covers the synced tables")
