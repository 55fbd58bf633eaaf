"""`appliance frontdoor ...`: the host's TLS front door."""

from __future__ import annotations

import sys

import click

from appliance.config import load_host_config


@click.group()
def frontdoor() -> None:
    """The host's front door (TLS at each tenant's hostname, routed to that tenant's gateway)."""


@frontdoor.command()
def ca() -> None:
    """Print the front door CA's certificate (PEM), to install on clients that reach this host's tenants.

    Example: appliance frontdoor ca > appliance-ca.pem; curl --cacert appliance-ca.pem https://acme.appliance.internal/healthz
    """
    host = load_host_config()
    if not host.runs_frontdoor:
        click.echo(f"error: host {host.name} runs no front door (frontdoor.enabled is false, or it has no tenants)",
                   err=True)
        sys.exit(1)
    try:
        pem = host.frontdoor_ca_cert.read_text()
    except FileNotFoundError:
        click.echo(f"error: {host.frontdoor_ca_cert} does not exist yet: deploy this host first", err=True)
        sys.exit(1)
    click.echo(pem, nl=False)


@frontdoor.command()
def urls() -> None:
    """Print each tenant's URL, one per line: `<tenant> <url>`."""
    host = load_host_config()
    for tenant in host.tenants:
        click.echo(f"{tenant.id} {tenant.url}")
