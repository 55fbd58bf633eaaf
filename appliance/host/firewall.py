"""The loopback port rules, refreshed on the host when the tenant's users change (`appliance host users`).

The deploy's own firewall step comes last (every tenant's users exist by then). A host deployed before a component
had a user of its own restarts that component under the new user earlier in the same deploy, and the rules loaded
then do not name that user yet: without this the component would be refused its upstreams (Postgres...) until the
deploy's end, and the deploy would stop at the component's health check. The file written here is what the deploy
writes, so its last step then finds nothing to change.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess

from appliance import desired
from appliance.config import HostConfig
from appliance.objectstore.files import write_atomic


def _stale(host: HostConfig) -> str | None:
    """The rules the users now on the host call for, when the loaded file says otherwise; None when it agrees (or
    was never written: the deploy's own step writes it first)."""
    if not host.common.port_firewall or shutil.which("nft") is None:
        return None
    content = desired.firewall_rules(host, {entry.pw_name for entry in pwd.getpwall()})
    try:
        return None if desired.firewall_file(host).read_text() == content else content
    except FileNotFoundError:
        return None


def firewall_current(host: HostConfig) -> bool:
    return _stale(host) is None


def refresh_firewall(host: HostConfig) -> list[str]:
    """Rewrite and load the rules if the users now on the host change them; what changed, in words."""
    content = _stale(host)
    if content is None:
        return []
    path = desired.firewall_file(host)
    write_atomic(path, content.encode(), 0o644)
    result = subprocess.run(["nft", "-f", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nft -f {path} failed: {result.stderr.strip()[-400:]}")
    return ["loopback port rules name the new users"]
