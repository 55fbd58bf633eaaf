"""`appliance host ...`: host-side steps the deploy runs on each host (idempotent; they print what changed).

Operators do not need these; they exist so that work needing the host's own secrets happens on the host and
never passes through the controller or the inventory.
"""

from __future__ import annotations

import json
import pwd
import sys
from pathlib import Path

import click

from appliance.config import HostConfig, TenantConfig, load_host_config, load_tenant


def _report(changes: list[str], what: str) -> None:
    click.echo(f"{what}: " + (", ".join(changes) if changes else "no change"))


@click.group(hidden=True)
def host() -> None:
    """Host-side steps of the deploy (internal)."""


@host.command()
def facts() -> None:
    """Print what the host and each of its tenants is, as JSON (one Python start for the whole deploy)."""
    from appliance.host.facts import report

    click.echo(json.dumps(report(load_host_config()), sort_keys=True))


@host.command()
@click.argument("tenant_id")
def secrets(tenant_id: str) -> None:
    """Generate the tenant's missing secrets (0600, owned by the tenant user); never print them."""
    from appliance.secrets import ensure_tenant_secrets

    host, tenant = load_tenant(tenant_id)
    user = pwd.getpwnam(tenant.user)
    external = host.objectstore.mode == "external"
    _report(ensure_tenant_secrets(tenant, user.pw_uid, user.pw_gid, external_store=external), f"secrets of {tenant_id}")


@host.command()
@click.argument("tenant_id")
def users(tenant_id: str) -> None:
    """The OS users inside the tenant: each component's own (appliance.host.users), its files and groups."""
    import os

    from appliance.host.firewall import refresh_firewall
    from appliance.host.users import ensure_users

    host, tenant = load_tenant(tenant_id)
    owner = pwd.getpwnam(tenant.user)
    groups_before = set(os.getgrouplist(tenant.user, owner.pw_gid))
    changes = ensure_users(tenant)
    changes += refresh_firewall(load_host_config())
    if set(os.getgrouplist(tenant.user, owner.pw_gid)) != groups_before:
        changes += _restart_cluster_owner(host, tenant)
    _report(changes, f"OS users of {tenant_id}")


def _restart_cluster_owner(host: HostConfig, tenant: TenantConfig) -> list[str]:
    """The tenant's groups changed (it joined those of the dirs it backs up, or left those it no longer reads
    secrets through): Postgres, whose archiver runs pgBackRest, keeps the groups it started with, so it restarts.
    The backup scheduler is left to the services step after the backup's files are rendered anew (its definition
    changes with every release that changes groups): restarted here, it would start with the release before's
    wrapper, which may read a secret file the tenant's user no longer reads."""
    from appliance.restarts import RestartError, restart_components, running_components

    running = [c for c in running_components(host, tenant, tenant.user) if c == "postgres"]
    try:
        done = restart_components(host, tenant, running, lambda _: None)
    except RestartError as exc:
        raise click.ClickException(str(exc)) from None
    return [f"restarted {', '.join(done)} (the tenant's user's groups changed)"] if done else []


@host.command("postgres-init")
@click.argument("tenant_id")
def postgres_init(tenant_id: str) -> None:
    """initdb the tenant's cluster as the tenant's OS user (once)."""
    from appliance.host.postgres import initdb

    _, tenant = load_tenant(tenant_id)
    _report(["cluster created"] if initdb(tenant) else [], f"postgres cluster of {tenant_id}")


@host.command("postgres-roles")
@click.argument("tenant_id")
def postgres_roles(tenant_id: str) -> None:
    """Create the tenant's database roles and database; re-sync role passwords with the secrets."""
    from appliance.host.postgres import ensure_roles

    _, tenant = load_tenant(tenant_id)
    _report(ensure_roles(tenant), f"postgres roles of {tenant_id}")


@host.command("identity-issuers")
@click.argument("tenant_id")
def identity_issuers(tenant_id: str) -> None:
    """Copy the client secrets of the tenant's external OIDC issuers into its secrets dir (0600)."""
    from appliance.identity.issuer_secrets import copy_issuer_secrets

    _, tenant = load_tenant(tenant_id)
    _report(copy_issuer_secrets(tenant), f"issuer client secrets of {tenant_id}")


@host.command("backup-files")
@click.argument("tenant_id")
def backup_files(tenant_id: str) -> None:
    """pgBackRest config, wrapper and recovery keys: what archive_command needs before Postgres starts."""
    from appliance.backup.stanza import ensure_files

    host_config, tenant = load_tenant(tenant_id)
    _report(ensure_files(host_config, tenant), f"backup files of {tenant_id}")


@host.command("backup-stanza")
@click.argument("tenant_id")
def backup_stanza(tenant_id: str) -> None:
    """The tenant's pgBackRest stanza in its backup bucket (created once)."""
    from appliance.backup.stanza import ensure_stanza

    host_config, tenant = load_tenant(tenant_id)
    _report(ensure_stanza(host_config, tenant), f"backup stanza of {tenant_id}")


@host.command("record-deploy")
@click.argument("tenant_id")
@click.argument("detail")
def record_deploy(tenant_id: str, detail: str) -> None:
    """Append the deploy as an operator action to the tenant's audit trail."""
    from appliance.audit.operator import record_operator_action

    _, tenant = load_tenant(tenant_id)
    seq = record_operator_action(tenant, "deploy", json.loads(detail))
    click.echo(f"audit of {tenant_id}: deploy recorded as event {seq}")


@host.command("audit-bucket-check")
@click.argument("tenant_id")
def audit_bucket_check(tenant_id: str) -> None:
    """Refuse a tenant whose audit bucket holds an earlier tenant's locked trail (a reused id)."""
    from appliance.host.audit import foreign_trail

    host_config, tenant = load_tenant(tenant_id)
    problem = foreign_trail(host_config, tenant)
    if problem:
        click.echo(f"error: audit of {tenant_id}: {problem}", err=True)
        sys.exit(1)
    click.echo(f"audit bucket of {tenant_id}: no foreign trail")


@host.command("schema")
@click.argument("tenant_id")
def schema(tenant_id: str) -> None:
    """Apply the tenant's pending schema migrations; make the sync publication cover the synced tables."""
    from appliance.host.postgres import ensure_schema

    _, tenant = load_tenant(tenant_id)
    _report(ensure_schema(tenant), f"schema of {tenant_id}")


@host.command("postgres-reload")
@click.argument("tenant_id")
def postgres_reload(tenant_id: str) -> None:
    """Apply changed postgres config: reload, and restart only if a changed setting needs it."""
    import subprocess

    from appliance.host.postgres import reload
    from appliance.services import tenant_services
    from appliance.supervision import detect, manager

    host_config, tenant = load_tenant(tenant_id)
    if not reload(tenant):
        click.echo(f"postgres of {tenant_id}: reloaded")
        return
    spec = next(s for s in tenant_services(tenant) if s.component == "postgres")
    subprocess.run(manager(detect(host_config.common.service_manager)).restart_command(spec), check=True)
    click.echo(f"postgres of {tenant_id}: restarted (a changed setting needs a restart)")


@host.command("sync-container")
@click.argument("tenant_id")
def sync_container(tenant_id: str) -> None:
    """Run (or replace) the tenant's official Electric container with its current spec."""
    from appliance.sync.container import run_tenant_container

    _, tenant = load_tenant(tenant_id)
    _report(run_tenant_container(tenant), f"Electric container of {tenant_id}")


@host.command("objectstore-setup")
def objectstore_setup() -> None:
    """The embedded store's TLS, keys and identities file; a running store picks up what changed."""
    from appliance.host.objectstore import setup

    _report(setup(load_host_config()), "object store")


@host.command("frontdoor-setup")
def frontdoor_setup() -> None:
    """The front door's CA and every tenant's certificate: issued, renewed within the renewal window, or the
    operator's files checked and copied in."""
    from appliance.frontdoor.tls import OperatorCertificateError, ensure_frontdoor_tls

    try:
        _report(ensure_frontdoor_tls(load_host_config()), "front door TLS")
    except OperatorCertificateError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@host.command("frontdoor-remove")
def frontdoor_remove() -> None:
    """Stop the front door and remove its routing (frontdoor.enabled false, or no tenant); the CA is kept."""
    from appliance.frontdoor.host import remove_frontdoor

    _report(remove_frontdoor(load_host_config()), "front door")


@host.command("objectstore-tenant")
@click.argument("tenant_id")
@click.option("--keys-from", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file with the keys of a tenant of another host (relayed by the deploy; removed after).")
def objectstore_tenant(tenant_id: str, keys_from: Path | None) -> None:
    """The tenant's S3 identities (the audit shipper's and the backup's, each its own bucket only) and its buckets
    with their lock configuration."""
    from appliance.host.objectstore import ensure_tenant
    from appliance.objectstore.credentials import read_tenant_keys_file

    host_config = load_host_config()
    if keys_from is None:
        tenant = host_config.tenant(tenant_id)
        keys = previous = None
    else:
        served = {s.tenant.id: s.tenant for s in host_config.served_tenants}
        if tenant_id not in served:
            raise click.UsageError(f"this host's store keeps no tenant {tenant_id!r} of another host")
        tenant = served[tenant_id]
        try:
            keys, previous = read_tenant_keys_file(keys_from)
        except (OSError, ValueError, KeyError, TypeError):
            # Never the exception itself: its text could quote the file.
            raise click.ClickException(f"the relayed S3 keys of {tenant_id} are unreadable or incomplete") from None
        finally:
            keys_from.unlink(missing_ok=True)
    _report(ensure_tenant(host_config, tenant, keys, previous), f"object store of {tenant_id}")


@host.command("objectstore-check")
@click.argument("tenant_id")
def objectstore_check(tenant_id: str) -> None:
    """On a host whose store is elsewhere: the tenant's buckets answer its keys (exit 1 naming what fails). S3
    keys staged by a rotation become current here once the vault answers them (appliance.rotation.staged_keys)."""
    from appliance.objectstore.probe import probe_tenant
    from appliance.restarts import RestartError
    from appliance.rotation.staged_keys import promote

    host_config, tenant = load_tenant(tenant_id)
    try:
        for line in promote(host_config, tenant, click.echo):
            click.echo(line)
    except RestartError as exc:
        click.echo(f"error: {tenant_id}: staged S3 keys made current, but {exc}", err=True)
        sys.exit(1)
    result = probe_tenant(host_config, tenant)
    if not result.healthy:
        click.echo(f"error: object store of {tenant_id}: {result.detail}", err=True)
        if host_config.objectstore.mode == "external":
            click.echo(
                f"  the external store is operated outside the appliance: create buckets {tenant.audit_bucket} "
                f"(Object Lock, COMPLIANCE {tenant.audit.retention_days} days) and {tenant.backup_bucket} "
                "(versioned), an identity allowed only the first and one allowed only the second, then install "
                f"their keys with `appliance tenant s3-keys {tenant_id} --pair audit|backup`", err=True,
            )
        sys.exit(1)
    click.echo(f"object store of {tenant_id}: {result.detail}")


@host.command()
@click.option("--tenant", "tenant_id", help="Wait for this tenant's components (default: the host's).")
@click.option("--timeout", type=float, help="Seconds to wait (default: the health_timeout_s setting).")
@click.argument("components", nargs=-1, required=True)
def wait(tenant_id: str | None, timeout: float | None, components: tuple[str, ...]) -> None:
    """Wait until the named components answer their health probes; name the log to read if they do not."""
    from appliance.services import host_services
    from appliance.status import wait_healthy

    host_config = load_host_config()
    specs = [s for s in host_services(host_config) if s.tenant == tenant_id and s.component in components]
    missing = set(components) - {s.component for s in specs}
    if missing:
        raise click.UsageError(f"unknown components {sorted(missing)}")
    timeout_s = timeout or host_config.common.health_timeout_s
    by_name = {s.name: s for s in specs}
    failed = wait_healthy(host_config, specs, timeout_s, lambda spec, seconds, detail: click.echo(
        f"{spec.name}: healthy after {seconds:.1f}s ({detail})"))
    for name, detail in failed.items():
        spec = by_name[name]
        click.echo(
            f"error: {spec.component}{' of ' + tenant_id if tenant_id else ''} is not healthy: "
            f"{detail}; command: {' '.join(spec.command)}; log: {spec.log_file}",
            err=True,
        )
    if failed:
        sys.exit(1)
