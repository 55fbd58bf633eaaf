"""`appliance inventory check FILE`: validate an inventory without touching any machine."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import click

from appliance.config import ConfigError, inventory_configs


def load_inventory_file(path: Path) -> dict[str, dict[str, Any]]:
    """Hosts and their data from a pyinfra inventory file (groups are lists of names or (name, data))."""
    namespace = runpy.run_path(str(path))
    hosts: dict[str, dict[str, Any]] = {}
    for group, members in namespace.items():
        if group.startswith("_") or not isinstance(members, list | tuple):
            continue
        for member in members:
            name, data = (member, {}) if isinstance(member, str) else member
            hosts.setdefault(name, {}).update(data)
    return hosts


@click.group()
def inventory() -> None:
    """Inspect inventories."""


@inventory.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(path: Path) -> None:
    """Resolve every host and tenant of an inventory and report ports, or the first problem found."""
    try:
        configs = inventory_configs(load_inventory_file(path))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for name, host in configs.items():
        store = "runs the embedded object store" if host.runs_objectstore else f"object store: {host.s3_endpoint}"
        click.echo(f"{name}: {len(host.tenants)} tenant(s), {store}")
        for tenant in host.tenants:
            ports = ", ".join(f"{k} {v}" for k, v in tenant.ports.items())
            click.echo(f"  {tenant.id} (slot {tenant.slot}, user {tenant.user}): {ports}")
    click.echo("inventory ok")
