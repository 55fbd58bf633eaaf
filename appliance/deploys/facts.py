"""Facts the deploys ask of a host: what it is, never what to do."""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase

from appliance.config import HostConfig


class ApplianceFacts(FactBase[dict[str, Any]]):
    """`appliance host facts` on the host: JSON about the host or one tenant ({} before the venv exists)."""

    def command(self, appliance: str, tenant: str = "") -> str:
        scope = f" --tenant {tenant}" if tenant else ""
        return f"if [ -x {appliance} ]; then {appliance} host facts{scope}; else echo '{{}}'; fi"

    def process(self, output: list[str]) -> dict[str, Any]:
        return json.loads("\n".join(output) or "{}")


class FileContent(FactBase[str]):
    """A small file's first line, or '' when it does not exist."""

    def command(self, path: str) -> str:
        return f"head -n1 {path} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class InitProcess(FactBase[str]):
    """The name of PID 1 (systemd, or something else when the host is a container or a microVM)."""

    def command(self) -> str:
        return "cat /proc/1/comm"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class SupervisordRunning(FactBase[bool]):
    def command(self) -> str:
        return "supervisorctl pid 2>/dev/null || true"

    def process(self, output: list[str]) -> bool:
        return bool(output) and output[0].strip().isdigit()


# One `appliance host facts` run per host/tenant per deploy run: a Python start is the cost of a fact here,
# and every step of a tenant decides from the state the tenant was in when its deploy began.
_memo: dict[tuple[str, str], dict[str, Any]] = {}


def appliance_facts(config: HostConfig, tenant: str = "") -> dict[str, Any]:
    key = (host.name, tenant)
    if key not in _memo:
        appliance = str(config.common.install_root / "venv" / "bin" / "appliance")
        _memo[key] = host.get_fact(ApplianceFacts, appliance=appliance, tenant=tenant)
    return _memo[key]
