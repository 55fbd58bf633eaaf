"""Resolve the inventory into configs before any operation runs, so bad input never touches a machine."""

from __future__ import annotations

from typing import Any

from pyinfra import host as current_host
from pyinfra.api import Host, Inventory, operation

from appliance.config import HostConfig
from appliance.desired import resolved_host, selected_tenants

__all__ = ["all_hosts_reach", "known_to_inspect", "resolve", "selected_tenants"]


def known_to_inspect(deploy_file: str) -> None:
    """Let `inspect` find the module of deploy.py's frames in its cache.

    pyinfra orders operations by each one's call stack (`inspect.stack()`), and for a frame of a file that is no
    module `inspect.getmodule` scans every loaded module. pyinfra executes deploy.py rather than importing it, so
    each operation called from it cost such a scan: ~400 per run over ~1,000 modules, 0.4-0.7 s of a no-op
    redeploy. Registered as a module (nothing imports it), its file is in `inspect`'s cache after the first scan.
    """
    import os
    import sys
    import types

    module = types.ModuleType("appliance_deploy_file", "deploy.py as pyinfra runs it (for inspect's cache)")
    module.__file__ = os.path.abspath(deploy_file)
    sys.modules.setdefault(module.__name__, module)


def resolve(host: Host, inventory: Inventory, *, docker_engine: bool, source_digest: str) -> HostConfig:
    """This host's config (`appliance.desired.resolved_host`) from pyinfra's inventory."""
    hosts: dict[str, dict[str, Any]] = {h.name: h.data.dict() for h in inventory}
    return resolved_host(hosts, host.name, docker_engine=docker_engine, source_digest=source_digest)


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
