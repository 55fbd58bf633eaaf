"""Resolve the inventory into configs before any operation runs, so bad input never touches a machine."""

from __future__ import annotations

from typing import Any

from pyinfra import host as current_host
from pyinfra.api import Host, Inventory, operation

from appliance.config import ConfigError, HostConfig, inventory_configs
from appliance.sync.container import resolve_runtime


def resolve(host: Host, inventory: Inventory, *, docker_engine: bool, source_digest: str) -> HostConfig:
    """This host's config, after the whole inventory has been cross-checked, with what only the host can
    tell decided once here: the sync runtime `auto` resolves to (does a Docker engine answer there?), and
    the sources its appliance services run (a new digest restarts them)."""
    hosts: dict[str, dict[str, Any]] = {h.name: h.data.dict() for h in inventory}
    config = inventory_configs(hosts)[host.name]
    docker = docker_engine
    tenants = tuple(
        t.model_copy(update={"sync": t.sync.model_copy(update={"runtime": resolve_runtime(t.sync.runtime, docker)})})
        for t in config.tenants
    )
    return config.model_copy(update={"tenants": tenants, "source_digest": source_digest})


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


@operation()
def all_hosts_reach(step: str):
    """A point every host of the run passes together: no host runs an operation after it before every host has
    run its operations before it.

    pyinfra orders operations per host and joins hosts only at operations they share (the same call site on
    every host); otherwise a host's later operation may run while another host is still on an earlier one. So
    a step of one host that needs another host's earlier work (the vault reading tenant hosts' keys) must come
    after one of these, called unconditionally at one line of deploy.py on every host.
    """
    current_host.noop(step)
    yield from ()
