"""Service managers: systemd where it is PID 1, supervisord elsewhere — one interface, same service specs.

The deploy writes unit/program files rendered from roles/services/templates and asks the manager to apply
them; `appliance status` asks it for pid and uptime. Both speak only in service names from `ServiceSpec`.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from appliance import roles
from appliance.servicespec import ServiceSpec

ManagerName = Literal["systemd", "supervisor"]

SUPERVISOR_CONF = Path("/etc/supervisor/supervisord.conf")
SUPERVISOR_PROGRAMS = Path("/etc/supervisor/conf.d")
SUPERVISOR_SOCKET = Path("/var/run/supervisor.sock")
# How long supervisord may take to shut down: it stops each program in turn, waiting up to its stopwaitsecs
# (and programs that were still starting, as on a host whose deployed tenants it just brought up, are slow).
SUPERVISORD_STOP_WAIT_S = 300
# What supervisorctl prints while supervisord shuts down: it still holds its socket but serves no call.
SUPERVISORD_SHUTTING_DOWN = "SHUTDOWN_STATE"
SYSTEMD_UNITS = Path("/etc/systemd/system")


def detect(setting: str = "auto") -> ManagerName:
    """systemd when it runs as PID 1, else supervisord; an explicit setting wins."""
    if setting in ("systemd", "supervisor"):
        return setting  # type: ignore[return-value]
    try:
        return "systemd" if Path("/proc/1/comm").read_text().strip() == "systemd" else "supervisor"
    except OSError:
        return "supervisor"


@dataclass(frozen=True)
class ProcessState:
    running: bool
    pid: int | None
    uptime_s: int | None
    state: str  # the manager's own word: RUNNING, FATAL, active, failed, ...


class ServiceManager(Protocol):
    name: ManagerName

    def unit_path(self, spec: ServiceSpec) -> Path: ...
    def render(self, spec: ServiceSpec) -> str: ...
    def states(self, specs: list[ServiceSpec]) -> dict[str, ProcessState]: ...
    def apply_command(self, specs: list[ServiceSpec]) -> list[str]: ...
    def restart_command(self, spec: ServiceSpec) -> list[str]: ...
    def stop_command(self, spec: ServiceSpec) -> list[str]: ...
    def remove_command(self, specs: list[ServiceSpec]) -> list[str]: ...


def _render(template: str, spec: ServiceSpec, *, command: str | None = None, user: str | None = None) -> str:
    return roles.render(
        "services", template, spec=spec, command=command or shlex.join(spec.command), user=user or spec.user
    )


def supervisor_environment(spec: ServiceSpec) -> dict[str, str]:
    """The program's environment: the spec's, over the user's own HOME, USER and LOGNAME. supervisord switches the
    user but keeps its own environment (root's HOME): a library that looks in $HOME (asyncpg for a client
    certificate, npm for its cache, botocore for its config) would look where the service's user may not go.
    systemd sets these itself for User=. A service's home is its working directory (a tenant's root is its
    user's home)."""
    return {"HOME": str(spec.working_dir), "USER": spec.user, "LOGNAME": spec.user, **spec.environment}


def supervisor_command(spec: ServiceSpec) -> tuple[str, str]:
    """(command, user) for a supervisord program. A private /tmp needs root to set up a mount namespace, and
    supervisord cannot hand a capability to a user it switches to, so such programs start as root and drop to
    the service's user with setpriv before exec'ing it (keeping CAP_NET_BIND_SERVICE alone where asked)."""
    if not spec.private_tmp and not spec.bind_privileged_ports:
        return shlex.join(spec.command), spec.user
    caps = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service",
            "--bounding-set=-all,+net_bind_service"] if spec.bind_privileged_ports else []
    drop = ["setpriv", f"--reuid={spec.user}", f"--regid={spec.user}", "--init-groups", *caps, "--", *spec.command]
    if not spec.private_tmp:
        return shlex.join(drop), "root"
    script = f"mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp && exec {shlex.join(drop)}"
    return shlex.join(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]), "root"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: object) -> http.client.HTTPConnection:
        return _UnixHTTPConnection(self._path, self._timeout)


class Supervisor:
    name: ManagerName = "supervisor"

    def __init__(self, socket_path: Path = SUPERVISOR_SOCKET) -> None:
        self.socket_path = socket_path

    def unit_path(self, spec: ServiceSpec) -> Path:
        return SUPERVISOR_PROGRAMS / f"{spec.name}.conf"

    def render(self, spec: ServiceSpec) -> str:
        command, user = supervisor_command(spec)
        # supervisord expands %(name)s in its values; a literal % must be doubled.
        return roles.render("services", "supervisor-program.conf.j2", spec=spec, command=command.replace("%", "%%"),
                            user=user, environment=supervisor_environment(spec))

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        # supervisord's own XML-RPC over its unix socket: one round trip for every process, where
        # `supervisorctl status` would cost a Python start per call.
        return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(self.socket_path)))

    def is_running(self) -> bool:
        try:
            return self._rpc().supervisor.getState()["statename"] == "RUNNING"  # type: ignore[index]
        except (OSError, xmlrpc.client.Error):
            return False

    def states(self, specs: list[ServiceSpec]) -> dict[str, ProcessState]:
        wanted = {spec.name for spec in specs}
        result = {name: ProcessState(False, None, None, "ABSENT") for name in wanted}
        try:
            infos = self._rpc().supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Error) as exc:
            return {name: ProcessState(False, None, None, f"supervisord unreachable: {exc}") for name in wanted}
        for info in infos:  # type: ignore[union-attr]
            if info["name"] in wanted:
                running = info["statename"] == "RUNNING"
                uptime = int(info["now"] - info["start"]) if running else None
                result[info["name"]] = ProcessState(running, info["pid"] or None, uptime, info["statename"])
        return result

    def apply_command(self, specs: list[ServiceSpec]) -> list[str]:
        # `update` adds new programs, restarts those whose program file changed, leaves the rest alone.
        return ["supervisorctl", "update", *[spec.name for spec in specs]]

    def restart_command(self, spec: ServiceSpec) -> list[str]:
        return ["supervisorctl", "restart", spec.name]

    def stop_command(self, spec: ServiceSpec) -> list[str]:
        return ["supervisorctl", "stop", spec.name]

    def remove_command(self, specs: list[ServiceSpec]) -> list[str]:
        return ["supervisorctl", "update"]


class Systemd:
    name: ManagerName = "systemd"

    def unit_path(self, spec: ServiceSpec) -> Path:
        return SYSTEMD_UNITS / spec.unit_name

    def render(self, spec: ServiceSpec) -> str:
        return _render("systemd.service.j2", spec)

    def states(self, specs: list[ServiceSpec]) -> dict[str, ProcessState]:
        result = {}
        boot = time.monotonic()
        for spec in specs:
            out = subprocess.run(
                ["systemctl", "show", spec.unit_name, "-p", "MainPID,ActiveState,ActiveEnterTimestampMonotonic"],
                capture_output=True, text=True,
            ).stdout
            props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            pid = int(props.get("MainPID", "0") or 0) or None
            active = props.get("ActiveState", "unknown")
            since = int(props.get("ActiveEnterTimestampMonotonic", "0") or 0)
            uptime = int(boot - since / 1e6) if active == "active" and since else None
            result[spec.name] = ProcessState(active == "active", pid, uptime, active)
        return result

    def apply_command(self, specs: list[ServiceSpec]) -> list[str]:
        # `enable --now` starts a unit that is not running but leaves a running one on its old definition: a
        # running unit whose file changed is restarted. The deploy applies one unit at a time, when its own
        # file changed, so nothing else restarts.
        names = " ".join(spec.unit_name for spec in specs)
        script = (f"systemctl daemon-reload && for unit in {names}; do "
                  'if systemctl is-active --quiet "$unit"; then systemctl restart "$unit"; '
                  'else systemctl enable --now "$unit"; fi || exit 1; done')
        return ["sh", "-c", script]

    def restart_command(self, spec: ServiceSpec) -> list[str]:
        return ["systemctl", "restart", spec.unit_name]

    def stop_command(self, spec: ServiceSpec) -> list[str]:
        return ["systemctl", "stop", spec.unit_name]

    def remove_command(self, specs: list[ServiceSpec]) -> list[str]:
        # Run once the unit files are gone (as supervisord's `update` is): `systemctl disable` needs the file,
        # so the link that enabled the unit (WantedBy=multi-user.target in the template) is removed directly.
        wants = SYSTEMD_UNITS / "multi-user.target.wants"
        links = " ".join(shlex.quote(str(wants / spec.unit_name)) for spec in specs)
        return ["sh", "-c", f"rm -f {links} && systemctl daemon-reload"]


def manager(name: ManagerName) -> ServiceManager:
    return Systemd() if name == "systemd" else Supervisor()


def remove_services(mgr: ServiceManager, specs: list[ServiceSpec]) -> None:
    """Stop `specs` (the last first), delete their unit/program files and have the manager forget them."""
    for spec in reversed(specs):
        subprocess.run(mgr.stop_command(spec), capture_output=True)
        mgr.unit_path(spec).unlink(missing_ok=True)
    subprocess.run(mgr.remove_command(specs), capture_output=True)
