"""The tenant's own Postgres cluster: initdb as the tenant user, config, supervised postmaster, roles."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import server

from appliance import roles
from appliance.backup.archive import archive_command as backup_archive_command
from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.deploys.facts import appliance_facts
from appliance.deploys.managed import managed_file
from appliance.deploys.services import install_services
from appliance.services import tenant_services
from appliance.supervision import ManagerName
from appliance.sync.container import postgres_extra_listen


def _host_command(config: HostConfig, *args: str) -> str:
    return " ".join([str(config.common.install_root / "venv" / "bin" / "appliance"), "host", *args])


@operation()
def cluster_initialized(config: HostConfig, tenant: TenantConfig):
    if appliance_facts(config, tenant.id).get("pg_initialized"):
        host.noop(f"cluster of {tenant.id} exists")
        return
    yield _host_command(config, "postgres-init", tenant.id)


@operation()
def roles_and_database(config: HostConfig, tenant: TenantConfig):
    if appliance_facts(config, tenant.id).get("pg_roles_ok"):
        host.noop(f"roles of {tenant.id} log in with their secrets")
        return
    yield _host_command(config, "postgres-roles", tenant.id)


@operation()
def backup_files(config: HostConfig, tenant: TenantConfig):
    if appliance_facts(config, tenant.id).get("backup_files_ok"):
        host.noop(f"pgBackRest files of {tenant.id} are current")
        return
    yield _host_command(config, "backup-files", tenant.id)


@operation()
def schema_and_publication(config: HostConfig, tenant: TenantConfig):
    if appliance_facts(config, tenant.id).get("schema_current"):
        host.noop(f"schema of {tenant.id} is current, publication covers the synced tables")
        return
    yield _host_command(config, "schema", tenant.id)


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
    backup_files(name=f"pgBackRest config and wrapper of {tenant.id}", config=config, tenant=tenant)
    fresh = cluster_initialized(name=f"Postgres cluster of {tenant.id} (initdb)", config=config, tenant=tenant)
    conf_ops = [
        managed_file(
            f"Postgres {name} of {tenant.id}", str(tenant.pg_data / name), content,
            user=tenant.user, group=tenant.user, mode="600",
        )
        for name, content in postgres_files(
            tenant, _docker_bridge_gateway() if tenant.sync.runtime is SyncRuntime.electric else ""
        ).items()
    ]
    spec = next(s for s in tenant_services(tenant, config.source_digest) if s.component == "postgres")
    apply, *_ = install_services(config, manager, [spec], tenant=tenant.id)
    server.shell(
        name=f"Reload postgres of {tenant.id} (restart only if a changed setting needs it)",
        commands=[_host_command(config, "postgres-reload", tenant.id)],
        _if=lambda: not fresh.did_change() and not apply.did_change() and any(op.did_change() for op in conf_ops),
    )
    roles_and_database(name=f"Postgres roles and database of {tenant.id}", config=config, tenant=tenant)
    schema_and_publication(name=f"Schema migrations and sync publication of {tenant.id}", config=config,
                           tenant=tenant)
