"""`appliance user add|list|disable|enable|reset-password <tenant> [<email>]`: the people of a tenant's embedded
identity provider (run on the host, as root). Every change is an audited operator action.

A password is never taken from the command line (it would show in `ps` and shell history): `--password-stdin`
reads it from standard input; otherwise the command prints a one-time setup link for the person to set it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
import psycopg

from appliance.config import TenantConfig, load_tenant

_PASSWORD_HELP = ("Read the password from standard input (its first line) instead of printing a setup link. "
                  "Never pass a password as an argument.")


@click.group()
def user() -> None:
    """People who log in to a tenant through its embedded identity provider."""


def _tenant(tenant_id: str) -> TenantConfig:
    tenant = load_tenant(tenant_id)[1]
    if not tenant.identity.embedded:
        raise click.ClickException(f"tenant {tenant.id} has no embedded identity provider (identity.embedded is "
                                   "false): its people are managed at its external issuers")
    return tenant


@contextmanager
def _connection(tenant: TenantConfig) -> Iterator[psycopg.Connection[Any]]:
    from appliance.pg import connect

    try:
        conn = connect(tenant)
    except (psycopg.Error, OSError) as exc:
        raise click.ClickException(f"cannot reach {tenant.id}'s Postgres ({type(exc).__name__}); is it running? "
                                   "(appliance status)") from None
    with conn:
        yield conn


@contextmanager
def _account_errors() -> Iterator[None]:
    from appliance.identity.accounts import AccountError

    try:
        yield
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise click.ClickException("the two passwords differ")
        return first
    line = sys.stdin.readline()
    if not line:
        raise click.ClickException("--password-stdin: nothing on standard input")
    return line.rstrip("\r\n")


@user.command()
@click.argument("tenant_id")
@click.argument("email")
@click.option("--name", "display_name", default="", help="Display name (shown to others in the tenant).")
@click.option("--password-stdin", is_flag=True, help=_PASSWORD_HELP)
def add(tenant_id: str, email: str, display_name: str, password_stdin: bool) -> None:
    """Add EMAIL as a person who may log in; print their setup link (or take a password from stdin)."""
    from appliance.identity import accounts

    tenant = _tenant(tenant_id)
    password = _read_password() if password_stdin else None
    with _connection(tenant) as conn, _account_errors():
        account = accounts.add(conn, tenant, email, display_name, password)
        click.echo(f"added {account.email} to {tenant.id} (account {account.id})")
        if password is None:
            link = accounts.setup_link(conn, tenant, account.email)
            click.echo(f"setup link (one use, {tenant.identity.setup_link_ttl_s // 3600} h; give it only to them):")
            click.echo(link)
    click.echo(f"next: they log in at {tenant.url}/api/auth/login")


@user.command("list")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_(tenant_id: str, as_json: bool) -> None:
    """List the tenant's people: email, state, and whether a password is set."""
    from appliance.identity import accounts

    tenant = _tenant(tenant_id)
    with _connection(tenant) as conn:
        found = accounts.list_accounts(conn)
    if as_json:
        click.echo(json.dumps([{
            "id": str(a.id), "email": a.email, "name": a.display_name, "disabled": a.disabled,
            "password_set": a.has_password, "locked_until": a.locked_until.isoformat() if a.locked_until else None,
            "created_at": a.created_at.isoformat(),
        } for a in found], indent=2))
        return
    if not found:
        click.echo(f"{tenant.id} has no people yet (appliance user add {tenant.id} <email>)")
        return
    click.echo(f"{'EMAIL':<40} {'STATE':<9} {'PASSWORD':<9} NAME")
    for a in found:
        state = "disabled" if a.disabled else ("locked" if a.locked_until else "active")
        click.echo(f"{a.email:<40} {state:<9} {'set' if a.has_password else 'not set':<9} {a.display_name}")


@user.command()
@click.argument("tenant_id")
@click.argument("email")
def disable(tenant_id: str, email: str) -> None:
    """Disable EMAIL: no login, their sessions end, their tokens are refused."""
    from appliance.identity import accounts

    tenant = _tenant(tenant_id)
    with _connection(tenant) as conn, _account_errors():
        account = accounts.set_disabled(conn, tenant, email, True)
    click.echo(f"{account.email} is disabled in {tenant.id}: logins, refreshes and their tokens are refused "
               f"(tokens already handed out end within {tenant.identity.access_token_ttl_s} s)")


@user.command()
@click.argument("tenant_id")
@click.argument("email")
def enable(tenant_id: str, email: str) -> None:
    """Enable EMAIL again."""
    from appliance.identity import accounts

    tenant = _tenant(tenant_id)
    with _connection(tenant) as conn, _account_errors():
        account = accounts.set_disabled(conn, tenant, email, False)
    click.echo(f"{account.email} may log in to {tenant.id} again")


@user.command("reset-password")
@click.argument("tenant_id")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help=_PASSWORD_HELP)
def reset_password(tenant_id: str, email: str, password_stdin: bool) -> None:
    """Set EMAIL's password (from stdin) or print a new setup link; unlocks the account, ends its sessions."""
    from appliance.identity import accounts

    tenant = _tenant(tenant_id)
    password = _read_password() if password_stdin else None
    with _connection(tenant) as conn, _account_errors():
        if password is not None:
            account = accounts.set_password(conn, tenant, email, password)
            click.echo(f"password of {account.email} set; the account is unlocked")
        else:
            link = accounts.setup_link(conn, tenant, email)
            click.echo(f"setup link for {accounts.normalize_email(email)} (one use; earlier links no longer work):")
            click.echo(link)
