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

from appliance import roles
from appliance.config import HostConfig

# The gateway is the door every caller uses; everything else is private to its tenant.
PRIVATE_COMPONENTS = ("postgres", "streams", "sync", "agents", "identity")


def ruleset(config: HostConfig, existing_users: set[str]) -> str:
    # nft resolves user names when it loads the rules, so only tenants whose user exists can be listed; a
    # tenant deployed later gets its rules on that deploy.
    tenants = [
        {"user": t.user, "ports": [t.port(c) for c in PRIVATE_COMPONENTS]}
        for t in config.tenants if t.user in existing_users
    ]
    store_internal = [port for name, port in config.objectstore.ports().items() if name != "s3"]
    internal = store_internal if config.runs_objectstore and config.objectstore_user in existing_users else []
    # A vault host's store listens on its LAN address; from the network only S3 (TLS, per-tenant keys) may
    # be reached, never the store's internal ports.
    exposed = config.runs_objectstore and not config.objectstore.loopback
    lan_internal = store_internal if exposed else []
    frontdoor = config.runs_frontdoor and config.frontdoor_user in existing_users
    return roles.render(
        "common", "nftables.conf.j2", tenants=tenants, objectstore_ports=internal,
        objectstore_user=config.objectstore_user, objectstore_lan_ports=lan_internal,
        frontdoor_user=config.frontdoor_user,
        frontdoor_gateway_ports=[t.port("gateway") for t in config.tenants] if frontdoor else [],
    )


@operation()
def port_firewall(config: HostConfig):
    """Write and load the rules when they changed, or when the kernel lost them (a reboot)."""
    path = str(config.common.config_dir / "nftables.conf")
    content = ruleset(config, set(host.get_fact(Users)))
    changed = host.get_fact(Sha1File, path=path) != hashlib.sha1(content.encode()).hexdigest()
    loaded = bool(host.get_fact(Command, "nft list table inet appliance >/dev/null 2>&1 && echo yes || true"))
    if not changed and loaded:
        host.noop("port ownership rules are loaded")
        return
    yield from files.put._inner(src=io.StringIO(content), dest=path, mode="644", user="root", group="root")
    yield f"nft -f {path}"
