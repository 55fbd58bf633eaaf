"""The front door's supervised process: Debian's caddy as the front door's own user, able to bind 443 and 80
(CAP_NET_BIND_SERVICE, nothing else), its state under the front door's own directory."""

from __future__ import annotations

from pathlib import Path

from appliance.config import HostConfig
from appliance.frontdoor.caddyfile import caddyfile_path, grace_period_s
from appliance.servicespec import FRONTDOOR_SERVICE, ServiceSpec

CADDY = "/usr/bin/caddy"


def frontdoor_log(host: HostConfig) -> Path:
    """In a root-only directory: the log names request paths (thread ids) and client addresses of every tenant."""
    return host.frontdoor_state_dir / "log" / "frontdoor.log"


def frontdoor_service(host: HostConfig) -> ServiceSpec:
    state = host.frontdoor_root
    return ServiceSpec(
        name=FRONTDOOR_SERVICE,
        component="frontdoor",
        command=(CADDY, "run", "--config", str(caddyfile_path(host)), "--adapter", "caddyfile"),
        user=host.frontdoor_user,
        working_dir=state,
        log_file=frontdoor_log(host),
        port=host.frontdoor.https_port,
        probe="tcp",
        # Caddy keeps ACME accounts, certificates and its autosaved config under these.
        environment={"HOME": str(state), "XDG_DATA_HOME": str(state / "data"),
                     "XDG_CONFIG_HOME": str(state / "config")},
        # Caddy lets requests in flight finish on SIGTERM, for up to its grace period: wait that long and more.
        stop_wait_s=grace_period_s(host) + 10,
        bind_privileged_ports=True,
        writable=(state,),
        memory_max=host.frontdoor.memory_max,
    )


def reload_command(host: HostConfig) -> list[str]:
    """Hand the running Caddy its (possibly unchanged) Caddyfile and certificates: open connections, long-polls
    included, are finished by the old configuration while new ones get the new."""
    return [CADDY, "reload", "--force", "--config", str(caddyfile_path(host)), "--adapter", "caddyfile",
            "--address", f"unix/{host.frontdoor_admin_socket}"]
