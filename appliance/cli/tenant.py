"""`appliance tenant ...`: operations on one tenant of this host."""

from __future__ import annotations

import pwd
import shutil
import subprocess

import click

from appliance.config import S3_KEY_PAIRS, HostConfig, TenantConfig, load_host_config
from appliance.host.processes import kill_user_processes
from appliance.services import tenant_services
from appliance.supervision import detect, manager, remove_services


@click.group()
def tenant() -> None:
    """Operate on one tenant of this host."""


def _remove_services(host: HostConfig, tenant_config: TenantConfig) -> None:
    mgr = manager(detect(host.common.service_manager))
    specs = tenant_services(tenant_config)
    click.echo(f"stopping {', '.join(spec.name for spec in reversed(specs))}")
    remove_services(mgr, specs)


def _ship_final_audit(host: HostConfig, tenant_config: TenantConfig) -> None:
    """The destroy is the trail's last event, and the trail leaves the host before the data does."""
    import psycopg

    from appliance.audit.operator import record_operator_action, ship_now

    try:
        seq = record_operator_action(tenant_config, "tenant_destroy", {"host": host.name})
        ship_now(host, tenant_config, seq, timeout_s=60)
    except (psycopg.Error, OSError, TimeoutError, RuntimeError) as exc:
        raise click.ClickException(
            f"the audit trail of {tenant_config.id} could not be shipped before the destroy ({exc}); fix the store "
            "or postgres and retry, or pass --skip-audit-ship to lose the unshipped events with the data"
        ) from None
    click.echo(f"audit: tenant_destroy recorded as event {seq} and shipped to {tenant_config.audit_bucket}")


@tenant.command("s3-keys")
@click.argument("tenant_id")
@click.option("--pair", "component", required=True, type=click.Choice([p.component for p in S3_KEY_PAIRS]),
              help="whose keys: the audit shipper's (its audit bucket only) or the backup's (its backup bucket only)")
def s3_keys(tenant_id: str, component: str) -> None:
    """Install one of the tenant's S3 key pairs for an external store (AWS, MinIO, Ceph).

    Each pair should be a store identity of its own allowed on its one bucket (issue 20): run this once with
    `--pair audit` and once with `--pair backup`. Reads the access key and the secret key, one per line, from
    standard input (so they never appear in the process listing or the shell history); prints nothing of them.
    """
    from appliance.secrets import secret_access, write_private

    host = load_host_config()
    tenant_config = host.tenant(tenant_id)
    lines = [line.strip() for line in click.get_text_stream("stdin").read().splitlines() if line.strip()]
    if len(lines) != 2 or not lines[0].isalnum() or len(lines[1]) < 16:
        raise click.UsageError("expected two lines on stdin: the access key, then the secret key")
    pair = next(p for p in S3_KEY_PAIRS if p.component == component)
    for name, value in zip(pair.files, lines, strict=True):
        path = tenant_config.secret_path(name)
        staged = path.with_name(f".{name}.new")
        staged.unlink(missing_ok=True)
        mode, uid, gid = secret_access(tenant_config, name)
        write_private(staged, value, uid, gid, mode)
        staged.replace(path)
    from appliance.backup.stanza import secrets_changed

    secrets_changed(tenant_config)
    click.echo(f"{component} S3 keys of {tenant_id} installed; next: redeploy to check its buckets answer them")


def _tenant_or_leftovers(host: HostConfig, tenant_id: str) -> TenantConfig:
    """The tenant as the host config has it; or, for a tenant the config no longer lists (removed from the
    inventory and redeployed) whose user, directory or services are still on the host, enough of it to find
    and remove them: names and paths derive from the id alone."""
    from appliance.config import ConfigError, host_config, validate_tenant_id

    try:
        return host.tenant(tenant_id)
    except ConfigError:
        validate_tenant_id(tenant_id)
        leftover = host_config(host.name, {"tenants": {tenant_id: {"slot": 0}}}).tenant(tenant_id)
        leftover = leftover.model_copy(update={"common": host.common, "objectstore": host.objectstore})
        try:
            pwd.getpwnam(leftover.user)
            exists = True
        except KeyError:
            exists = leftover.root.exists()
        if not exists:
            raise
        click.echo(f"note: {tenant_id} is not in this host's config any more; removing what is left of it")
        return leftover


@tenant.command()
@click.argument("tenant_id")
@click.option("--yes-destroy-data", is_flag=True, help="Required: confirms that the tenant's data is deleted.")
@click.option("--skip-audit-ship", is_flag=True,
              help="Destroy even if the last audit events cannot be shipped (they are lost with the data).")
def destroy(tenant_id: str, yes_destroy_data: bool, skip_audit_ship: bool) -> None:
    """Stop and remove a tenant's processes, OS user and data on this host.

    Its COMPLIANCE-locked audit objects cannot be deleted by anyone until their retention ends; they stay
    in the object store. Remove the tenant from the inventory too, or the next deploy creates it again.
    """
    from appliance.host.users import account, group_exists

    host = load_host_config()
    tenant_config = _tenant_or_leftovers(host, tenant_id)
    if not yes_destroy_data:
        raise click.UsageError(
            f"this deletes every byte of tenant {tenant_id} on this host ({tenant_config.root}); "
            "pass --yes-destroy-data to confirm"
        )
    if not skip_audit_ship:
        _ship_final_audit(host, tenant_config)
    _remove_services(host, tenant_config)
    # The tenant's user and its components' own (the agents' user was left behind before issue 20's review).
    users = [found for name in (*tenant_config.own_users.values(), tenant_config.user)
             if (found := account(name)) is not None]
    for user in users:
        # Anything still running as one of the tenant's users (a stray child) goes too, by PID.
        kill_user_processes(user.pw_uid)
    if tenant_config.root.exists():
        click.echo(f"removing {tenant_config.root}")
        shutil.rmtree(tenant_config.root)
    for user in users:
        click.echo(f"removing OS user {user.pw_name}")
        subprocess.run(["userdel", user.pw_name], check=True, capture_output=True)
    # userdel keeps a user's own group while another user is in it (the tenant's and the agents' groups hold
    # each other's users): once all the users are gone, their groups go.
    for name in (*tenant_config.own_users.values(), tenant_config.user):
        if group_exists(name):
            subprocess.run(["groupdel", name], check=True, capture_output=True)
    from appliance.backup.paths import backup_paths

    # The root-only recovery keys would restore a tenant that was asked to be destroyed; they go too.
    backup_paths(tenant_config).recovery_keys_file.unlink(missing_ok=True)
    if host.runs_objectstore:
        from appliance.host.objectstore import forget_tenant

        for line in forget_tenant(host, tenant_config):
            click.echo(line)
    remaining = tuple(t for t in host.tenants if t.id != tenant_id)
    after = host.model_copy(update={"tenants": remaining})
    tenant_config.config_file.unlink(missing_ok=True)
    host.host_file.write_text(after.model_dump_json(indent=2) + "\n")
    # After host.json: whatever happens to the front door from here, the host no longer lists the tenant.
    from appliance.frontdoor.host import forget_tenant as leave_frontdoor

    for line in leave_frontdoor(host, after, tenant_config):
        click.echo(line)
    click.echo(
        f"tenant {tenant_id} destroyed on this host.\n"
        f"note: its audit batches in bucket {tenant_config.audit_bucket} are locked in COMPLIANCE mode for "
        f"{tenant_config.audit.retention_days} days from when each was shipped; nobody, the operator included, "
        "can delete them before then, and the id cannot be given to a new tenant until they expire.\n"
        f"next: remove {tenant_id} from the inventory, or the next deploy recreates it empty."
    )
