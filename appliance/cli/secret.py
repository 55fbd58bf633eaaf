"""`appliance secret list|rotate`: a tenant's secrets, by name (never by value), and replacing them."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from appliance.config import ConfigError, load_host_config


@click.group()
def secret() -> None:
    """A tenant's secrets: which exist and who reads them (`list`), and replacing them (`rotate`)."""


def _host_and_tenant(tenant_id: str):  # type: ignore[no-untyped-def]
    try:
        host = load_host_config()
        return host, host.tenant(tenant_id)
    except (ConfigError, KeyError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@secret.command("list")
@click.argument("tenant_id")
def list_secrets(tenant_id: str) -> None:
    """Each secret of TENANT_ID: when its file last changed, what reads it, how `rotate` replaces it."""
    from appliance.rotation.plan import ROTATIONS

    _, tenant = _host_and_tenant(tenant_id)
    for rotation in ROTATIONS.values():
        for name in rotation.secret_files:
            path = tenant.secret_path(name)
            try:
                changed = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            except FileNotFoundError:
                changed = "missing"
            restarts = ", ".join(rotation.restarts) or "nothing"
            how = "not in place (see rotate --help)" if rotation.how == "refused" else f"restarts {restarts}"
            click.echo(f"{name:<32} {changed:<21} {how}")


@secret.command()
@click.argument("tenant_id")
@click.argument("names", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Rotate every secret that can be rotated in place.")
@click.pass_context
def rotate(ctx: click.Context, tenant_id: str, names: tuple[str, ...], every: bool) -> None:
    """Replace secrets NAMES of TENANT_ID (`appliance secret list` names them) with new random values.

    Each new value takes effect where it is checked (a database role, the object store, the secrets table
    re-encrypted) and in its file at once; then only the components that read it restart, one at a time, each
    healthy before the next, the one that checks the secret before the one that presents it. The old value is
    refused from then on. Every rotation is an operator action in the tenant's audit trail (the name, what
    restarted; never a value).

    The backup cipher passphrase starts a new repository generation (pgBackRest keeps one passphrase for a
    repository's life): its own path in the backup bucket, its stanza, and a full backup taken at once. The
    backups made before stay restorable: the earlier generation is kept with its passphrase (in the tenant's
    secrets and the root-only recovery keys) until the new one holds the retention's full backups, then deleted
    with it. A restore picks whichever generation holds the backup its target needs.
    """
    from appliance.audit.operator import record_operator_action
    from appliance.restarts import RestartError
    from appliance.rotation.plan import ALIASES, ROTATIONS, rotation
    from appliance.rotation.steps import PROCEDURES, RotationError

    if every == bool(names):
        raise click.UsageError("name the secrets to rotate, or give --all (not both)")
    known = sorted({*ROTATIONS, *ALIASES})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.UsageError(f"unknown secrets {unknown}; known: {', '.join(known)}")
    host, tenant = _host_and_tenant(tenant_id)
    chosen = list(dict.fromkeys(rotation(n).name for n in names)) if names else list(ROTATIONS)
    failed = False
    for name in chosen:
        plan = ROTATIONS[name]
        if plan.how == "refused":
            click.echo(f"{name}: not rotated. {plan.why}", err=True)
            failed = failed or not every
            continue
        click.echo(f"{tenant.id}: rotating {name}")
        if plan.how == "jwt":
            from appliance.cli.token import rotate_key

            ctx.invoke(rotate_key, tenant_id=tenant.id)
            continue
        if plan.how == "identity_jwks":
            if not tenant.identity.embedded:
                click.echo(f"  {tenant.id} has no embedded provider: nothing to rotate")
                continue
            from appliance.cli.identity import rotate_keys

            ctx.invoke(rotate_keys, tenant_id=tenant.id)
            continue
        try:
            outcome = PROCEDURES[plan.how](host, tenant, plan, click.echo)
        except (RotationError, RestartError, OSError) as exc:
            click.echo(f"error: rotating {name} of {tenant.id}: {exc}", err=True)
            failed = True
            continue
        # Canonical audit JSON has no floats: the window in whole milliseconds.
        detail = {"secret": name, "restarted": outcome.restarted, "window_ms": round(outcome.window_s * 1000),
                  **outcome.detail}
        try:
            record_operator_action(tenant, "secret.rotated", detail)
        except Exception as exc:
            click.echo(f"warning: {name} rotated but not audited ({type(exc).__name__})", err=True)
            failed = True
        if outcome.detail.get("staged_for"):
            click.echo(f"  {name} staged for the deploy (the vault host {outcome.detail['staged_for']} keeps them)")
            continue
        restarted = ", ".join(outcome.restarted) or "nothing"
        click.echo(f"  {name} rotated; restarted: {restarted}; readers back within {outcome.window_s:.1f}s")
    from appliance.backup.stanza import secrets_changed

    # The root-only recovery keys and the bundles' secrets capsule follow the new values.
    secrets_changed(tenant)
    if failed:
        sys.exit(1)
