"""Loopback ports of a tenant answer only that tenant's OS user (and root): nftables owner matching.

Loopback is shared by every local user, and the streams server has no authentication of its own; without
this, one tenant's processes could talk to another tenant's streams or sync engine.
"""

from __future__ import annotations

import hashlib
import io

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import Sha1File
from pyinfra.facts.server import Command
from pyinfra.operations import files

from appliance import desired
from appliance.config import HostConfig
from appliance.deploys import facts
from appliance.deploys.facts import Accounts

LOADED = "nft list table inet appliance >/dev/null 2>&1 && echo yes || true"


def port_firewall(name: str, config: HostConfig) -> OperationMeta:
    """Write and load the rules when they changed, or when the kernel lost them (a reboot)."""
    facts.expect(Accounts)
    facts.expect(Sha1File, path=str(desired.firewall_file(config)))
    facts.expect(Command, command=LOADED)
    return _port_firewall(name=name, config=config)


@operation()
def _port_firewall(config: HostConfig):
    path = str(desired.firewall_file(config))
    # The users as they are now: tenants whose user this run made get their rules (nft resolves names).
    content = desired.firewall_rules(config, set(facts.fact(Accounts)))
    changed = facts.fact(Sha1File, path=path) != hashlib.sha1(content.encode()).hexdigest()
    loaded = bool(facts.fact(Command, command=LOADED))
    if not changed and loaded:
        host.noop("port ownership rules are loaded")
        return
    yield from files.put._inner(src=io.StringIO(content), dest=path, mode="644", user="root", group="root")
    yield f"nft -f {path}"
