"""Loopback ports of a tenant answer only that tenant's OS user (and root): nftables owner matching.

Loopback is shared by every local user, and the streams server has no authentication of its own; without
this, one tenant's processes could talk to another tenant's streams or sync engine.
"""

from __future__ import annotations

import hashlib
import io

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import Sha1File
from pyinfra.facts.server import Command, Users
from pyinfra.operations import files

from appliance import desired
from appliance.config import HostConfig


@operation()
def port_firewall(config: HostConfig):
    """Write and load the rules when they changed, or when the kernel lost them (a reboot)."""
    path = str(desired.firewall_file(config))
    content = desired.firewall_rules(config, set(host.get_fact(Users)))
    changed = host.get_fact(Sha1File, path=path) != hashlib.sha1(content.encode()).hexdigest()
    loaded = bool(host.get_fact(Command, "nft list table inet appliance >/dev/null 2>&1 && echo yes || true"))
    if not changed and loaded:
        host.noop("port ownership rules are loaded")
        return
    yield from files.put._inner(src=io.StringIO(content), dest=path, mode="644", user="root", group="root")
    yield f"nft -f {path}"
