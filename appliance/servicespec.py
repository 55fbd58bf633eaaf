"""What one supervised process is, as one spec rendered for any manager: `ServiceSpec`, and `appliance_service`
for the per-tenant processes of the appliance's own code.

A leaf: it builds on the config model only. Each component defines its service beside its code with these
(appliance/<component>/service.py, backup/schedule.py), `appliance.services` lists a host's services from
them, and the deploy renders each into a supervisord program file or a systemd unit (templates in
roles/services/templates/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from appliance.config import HostConfig, TenantConfig

ProbeKind = Literal["postgres", "http", "s3", "tcp"]

OBJECTSTORE_SERVICE: Final = "appliance-objectstore"
FRONTDOOR_SERVICE: Final = "appliance-frontdoor"

# Start order, lowest first, and stop order, the reverse (supervisord's `priority`; systemd's After=): the store
# before the clusters that archive to it, each cluster before what connects to it, the front door after the
# gateways it routes to. Stopping in reverse lets each Postgres archive its last WAL while the store still answers.
# With every program at one priority, supervisord stopped them one at a time in reverse name order, the store
# first: each Postgres's shutdown then waited on pgBackRest retrying the store until it was killed (SIGKILL after
# 60 s each, a host's shutdown over two minutes).
START_ORDER: Final = {
    "objectstore": 100, "postgres": 200, "streams": 300, "sync": 300, "identity": 300,
    "gateway": 400, "agents": 400, "audit": 400, "backup": 400, "frontdoor": 900,
}


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # unit/program name, unique on the host
    component: str  # postgres, streams, sync, identity, gateway, agents, audit, backup, objectstore, frontdoor
    command: tuple[str, ...]
    user: str
    working_dir: Path
    log_file: Path
    port: int | None = None
    probe: ProbeKind = "tcp"
    probe_path: str = ""  # for http probes
    environment: dict[str, str] = field(default_factory=dict)  # never secrets: services read secret files
    stop_signal: str = "TERM"
    stop_wait_s: int = 30
    tenant: str | None = None
    # A /tmp of its own: under systemd PrivateTmp=yes; under supervisord a mount namespace with a tmpfs.
    private_tmp: bool = False
    # May bind ports below 1024 (the front door's 443 and 80) without running as root: CAP_NET_BIND_SERVICE
    # and no other capability, ambient for the service's user.
    bind_privileged_ports: bool = False
    # What it creates is its own alone, unless it shares with its group on purpose (the agents, with the tenant's
    # backups: appliance.host.users).
    umask: str = "077"
    # Under systemd (ProtectSystem=strict) the only paths it may write; everything else is read-only to it.
    writable: tuple[Path, ...] = ()
    # systemd's MemoryMax= (from the component's `<role>_memory_max` setting); "" = no limit.
    memory_max: str = ""
    # Units it starts after and stops before (systemd's After=; supervisord has `priority` alone).
    after: tuple[str, ...] = ()

    @property
    def priority(self) -> int:
        return START_ORDER[self.component]

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"


def venv_bin(config: TenantConfig | HostConfig, program: str) -> str:
    return str(config.common.install_root / "venv" / "bin" / program)


def appliance_service(tenant: TenantConfig, component: str, verb: str, *, port: int | None = None,
                      probe: ProbeKind = "tcp", probe_path: str = "", stop_wait_s: int = 30) -> ServiceSpec:
    """A per-tenant process of the appliance's own code: `appliance <component> <verb> --tenant <id>` as the
    component's OS user (its own, or the tenant's: config.OWN_USER_COMPONENTS), in the tenant root, logging to its
    component log. host.json's directory goes into the environment
    so a host deployed with another `config_dir` still finds it; the sources' digest is added by
    `appliance.services.tenant_services`. Nothing secret: each command reads the secret files it needs."""
    return ServiceSpec(
        name=f"appliance-{tenant.id}-{component}",
        component=component,
        command=(venv_bin(tenant, "appliance"), component, verb, "--tenant", tenant.id),
        user=tenant.os_user(component),
        working_dir=tenant.root,
        log_file=tenant.log_file(component),
        port=port,
        probe=probe,
        probe_path=probe_path,
        environment={"APPLIANCE_CONFIG_DIR": str(tenant.common.config_dir)},
        stop_wait_s=stop_wait_s,
        tenant=tenant.id,
    )
