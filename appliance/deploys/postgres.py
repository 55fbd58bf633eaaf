"""The tenant's own Postgres cluster: initdb as the tenant user, config, supervised postmaster, roles."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from appliance import roles
from appliance.backup.archive import archive_command as backup_archive_command
from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import host_command, host_step
from appliance.deploys.managed import managed_file
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName
from appliance.sync.container import postgres_extra_listen


def postgres_files(tenant: TenantConfig, docker_bridge_gateway: str = "") -> dict[str, str]:
    """The cluster's config files, rendered (no secrets in them)."""
    # WAL goes to the tenant's pgBackRest repository from the first segment on (the wrapper exists before
    # Postgres starts: `backup_files` runs first).
    archive_command = backup_archive_command(tenant)
    electric = postgres_extra_listen(docker_bridge_gateway) if tenant.sync.runtime is SyncRuntime.electric else None
    return {
        "postgresql.conf": roles.render("postgres", "postgresql.conf.j2", tenant=tenant,
                                        archive_command=archive_command, electric=electric),
        "pg_hba.conf": roles.render("postgres", "pg_hba.conf.j2", tenant=tenant, electric=electric),
    }


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
    conf_ops = [
        managed_file(
            f"Postgres {name} of {tenant.id}", str(tenant.pg_data / name), content,
            user=tenant.user, group=tenant.user, mode="600",
        )
        for name, content in postgres_files(
            tenant, _docker_bridge_gateway() if tenant.sync.runtime is SyncRuntime.electric else ""
        ).items()
    ]
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
