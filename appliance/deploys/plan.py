"""Resolve the inventory into configs before any operation runs, so bad input never touches a machine."""

from __future__ import annotations

from typing import Any

from pyinfra.api import Host, Inventory

from appliance.config import ConfigError, HostConfig, inventory_configs


def resolve(host: Host, inventory: Inventory) -> HostConfig:
    """This host's config, after the whole inventory has been cross-checked."""
    hosts: dict[str, dict[str, Any]] = {h.name: h.data.dict() for h in inventory}
    configs = inventory_configs(hosts)
    return configs[host.name]


def selected_tenants(config: HostConfig, only: str | None) -> list[str]:
    """Tenants to deploy in this run: all of the host's, or those named by `--data only_tenants=a,b`."""
    ids = [t.id for t in config.tenants]
    if not only:
        return ids
    wanted = [t.strip() for t in str(only).split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        raise ConfigError(f"host {config.name}: only_tenants names unknown tenants {unknown}; it has {ids}")
    return [t for t in ids if t in wanted]
