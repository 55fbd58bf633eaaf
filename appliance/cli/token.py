"""`appliance token issue|rotate-key`: operators' access to a tenant's JWTs (run on the host, as root)."""

from __future__ import annotations

import sys
import uuid

import click

from appliance.config import load_tenant


@click.group()
def token() -> None:
    """Tenant JWTs: issue one for a principal, rotate the signing key."""


@token.command()
@click.argument("tenant_id")
@click.option("--subject", required=True, help="Principal id (UUID) the token authenticates.")
@click.option("--ttl", type=click.IntRange(30, 366 * 86400), default=None,
              help="Lifetime in seconds (default: the tenant's gateway.token_ttl_s).")
def issue(tenant_id: str, subject: str, ttl: int | None) -> None:
    """Print a token for SUBJECT on stdout (and nothing else); the issuance is audited."""
    from appliance.audit.operator import record_operator_action
    from appliance.gateway.core.security import Keyring

    try:
        principal = uuid.UUID(subject)
    except ValueError:
        raise click.BadParameter("must be a UUID", param_hint="--subject") from None
    tenant = load_tenant(tenant_id)[1]
    lifetime = ttl or tenant.gateway.token_ttl_s
    keyring = Keyring.for_tenant(tenant)
    jwt = keyring.issue(principal, lifetime)
    try:
        record_operator_action(tenant, "token_issued", {"ttl_s": lifetime, "kid": keyring.current_kid},
                               subject=f"principal:{principal}")
    except Exception as exc:
        # A token nobody can account for is not handed out.
        click.echo(f"error: cannot record the issuance in {tenant.id}'s audit trail ({type(exc).__name__}); "
                   "is its Postgres running? (appliance status)", err=True)
        sys.exit(1)
    click.echo(jwt)


@token.command("rotate-key")
@click.argument("tenant_id")
def rotate_key(tenant_id: str) -> None:
    """Replace the tenant's signing key; tokens signed by the old one stay valid for gateway.key_rotation_grace_s."""
    from appliance.audit.operator import record_operator_action
    from appliance.gateway.core.security import Keyring, rotate_signing_key

    tenant = load_tenant(tenant_id)[1]
    old_kid, new_kid = rotate_signing_key(tenant)
    if Keyring.for_tenant(tenant).current_kid != new_kid:
        click.echo("error: the new key is not the one the keyring reads", err=True)
        sys.exit(1)
    from appliance.backup.stanza import secrets_changed

    secrets_changed(tenant)
    try:
        record_operator_action(tenant, "key_rotation", {"old_kid": old_kid, "new_kid": new_kid})
    except Exception as exc:
        click.echo(f"warning: rotation done but not audited ({type(exc).__name__})", err=True)
    click.echo(f"rotated {tenant.id}'s signing key: {old_kid} -> {new_kid}; the old key verifies tokens for "
               f"{tenant.gateway.key_rotation_grace_s}s more. Running gateways pick it up within a second.")
