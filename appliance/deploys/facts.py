"""Facts the deploys ask of a host: what it is, never what to do."""

from __future__ import annotations

import json
from typing import Any, Literal

from pyinfra import host
from pyinfra.api import FactBase, operation

from appliance.config import HostConfig, TenantConfig
from appliance.services import venv_bin
from appliance.supervision import SUPERVISORD_SHUTTING_DOWN


class ApplianceFacts(FactBase[dict[str, Any]]):
    """`appliance host facts` on the host: JSON about the host and its tenants ({} before the venv exists)."""

    def command(self, appliance: str) -> str:
        return f"if [ -x {appliance} ]; then {appliance} host facts; else echo '{{}}'; fi"

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


class DockerServerVersion(FactBase[str]):
    """The Docker engine's version when one answers ('' when only the client, or nothing, is installed)."""

    def command(self) -> str:
        return "docker version --format '{{.Server.Version}}' 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


SupervisordState = Literal["running", "stopping", "absent"]


class Supervisord(FactBase[SupervisordState]):
    """Whether supervisord answers, and whether it is on its way out: while it shuts down (stopping its
    programs, which can take their stopwaitsecs each) it still holds its socket, so starting another fails
    ("Another program is already listening"), yet it answers every call with SHUTDOWN_STATE."""

    def command(self) -> str:
        return "supervisorctl pid 2>&1 || true"

    def process(self, output: list[str]) -> SupervisordState:
        text = "\n".join(output)
        if output and output[0].strip().isdigit():
            return "running"
        return "stopping" if SUPERVISORD_SHUTTING_DOWN in text else "absent"


# One `appliance host facts` run per host per deploy run, when the first step that needs it runs (after the
# bootstrap installed the package): a Python start is the cost of a fact here, and each step decides from
# the state the host was in when the appliance steps began. Every step is idempotent, so a step whose
# precondition an earlier step of the same run just created still does the right thing.
_memo: dict[str, dict[str, Any]] = {}


def appliance_facts(config: HostConfig, tenant: str = "") -> dict[str, Any]:
    if host.name not in _memo:
        _memo[host.name] = host.get_fact(ApplianceFacts, appliance=venv_bin(config, "appliance"))
    facts = _memo[host.name]
    return facts.get("tenants", {}).get(tenant, {}) if tenant else facts.get("host", {})


def host_command(config: HostConfig, *args: str) -> str:
    """`appliance host <args>` from the host's venv: the deploy's host-side steps."""
    return " ".join([venv_bin(config, "appliance"), "host", *args])


@operation()
def host_step(config: HostConfig, step: str, fact: str, current: str, tenant: TenantConfig | None = None):
    """`appliance host <step> [<tenant>]`, unless this run's host facts say `fact` already holds (then a no-op
    that says `current`)."""
    if appliance_facts(config, tenant.id if tenant else "").get(fact):
        host.noop(current)
        return
    yield host_command(config, step, *([tenant.id] if tenant else []))


def tenants_with_users(config: HostConfig) -> set[str]:
    """Tenants of this host whose OS user existed when the deploy began: their per-tenant files that host-wide
    steps write (config views, front-door socket dirs) are written there for all of them, selected by this run
    or not; a tenant new to the host gets them in its own substrate, once its user exists."""
    from pyinfra.facts.server import Users

    # Taken once, the first time it is asked (the bootstrap, before any user is made): pyinfra updates its
    # cached Users fact as `server.user` operations are prepared, so a later look would see new tenants too.
    if host.name not in _tenants_with_users:
        users = set(host.get_fact(Users))
        _tenants_with_users[host.name] = {tenant.id for tenant in config.tenants if tenant.user in users}
    return _tenants_with_users[host.name]


_tenants_with_users: dict[str, set[str]] = {}
