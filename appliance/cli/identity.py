"""`appliance identity serve|rotate-keys`: the tenant's embedded OIDC provider."""

from __future__ import annotations

import os
import shutil
import sys

import click

from appliance.config import TenantConfig, load_tenant


@click.group()
def identity() -> None:
    """The tenant's embedded OIDC provider (people's logins; see `appliance user` for the people)."""


@identity.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (as in this host's config).")
def serve(tenant_id: str) -> None:
    """Run the tenant's provider until SIGTERM (what its service manager starts, as the tenant's user)."""
    from appliance.identity.provider import (
        NODE_ENVIRONMENT,
        NODE_FLAGS,
        identity_dir,
        runtime_config_path,
        write_runtime_config,
    )

    tenant = load_tenant(tenant_id)[1]
    if not tenant.identity.embedded:
        click.echo(f"error: tenant {tenant.id} has no embedded provider (identity.embedded is false)", err=True)
        sys.exit(2)
    server = identity_dir(tenant) / "server.mjs"
    if not server.is_file():
        click.echo(f"error: {server} is missing: deploy the host again", err=True)
        sys.exit(1)
    path = runtime_config_path(tenant)
    write_runtime_config(tenant, path)
    node = shutil.which("node") or "/usr/bin/node"
    # exec: the supervised process becomes the provider itself (its pid, its signals, its exit status).
    os.execve(node, [node, *NODE_FLAGS, str(server), "--config", str(path)], {**os.environ, **NODE_ENVIRONMENT})


@identity.command("rotate-keys")
@click.argument("tenant_id")
def rotate_keys(tenant_id: str) -> None:
    """New signing keys for the tenant's provider; the old ones stay published (tokens they signed keep
    verifying) for a week. Restarts the provider (only it)."""
    import subprocess

    from appliance.audit.operator import record_operator_action
    from appliance.config import load_host_config
    from appliance.identity.keys import rotated_jwks
    from appliance.identity.service import identity_service
    from appliance.objectstore.files import write_atomic
    from appliance.secrets import secret_access
    from appliance.supervision import detect, manager

    host = load_host_config()
    tenant = host.tenant(tenant_id)
    if not tenant.identity.embedded:
        click.echo(f"error: tenant {tenant.id} has no embedded provider", err=True)
        sys.exit(2)
    path = tenant.secret_path("identity_jwks")
    document, added, dropped = rotated_jwks(path.read_text())
    mode, uid, gid = secret_access(tenant, "identity_jwks")
    write_atomic(path, document.encode(), mode, (uid, gid))
    from appliance.backup.stanza import secrets_changed

    secrets_changed(tenant)
    record_operator_action(tenant, "identity.keys_rotated", {"new_kids": added, "dropped_kids": dropped})
    mgr = manager(detect(host.common.service_manager))
    subprocess.run(mgr.restart_command(identity_service(tenant)), check=True, capture_output=True)
    if not _publishes(tenant, added):
        click.echo(f"error: {tenant.id}'s provider does not publish its new keys after a restart; see "
                   f"{tenant.log_file('identity')}", err=True)
        sys.exit(1)
    # Gateways learn of the new keys now, not when their refetch limit allows (appliance.gateway.identity.events).
    from appliance.gateway.identity.events import KEYS_CHANNEL
    from appliance.pg import connect

    with connect(tenant) as conn:
        conn.execute(f"NOTIFY {KEYS_CHANNEL}")
    click.echo(f"{tenant.id}'s provider signs with {', '.join(added)} from now on"
               + (f"; dropped keys retired over a week ago: {', '.join(dropped)}" if dropped else ""))


def _publishes(tenant: TenantConfig, kids: list[str], timeout_s: float = 30.0) -> bool:
    """The provider (restarted) answers with `kids` among its published keys, within `timeout_s`."""
    import time

    import httpx

    from appliance.identity.provider import internal_url

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            published = {k.get("kid") for k in httpx.get(internal_url(tenant) + "/jwks", timeout=2).json()["keys"]}
            if set(kids) <= published:
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False
