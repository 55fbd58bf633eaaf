"""The host's front door: one Caddy for all tenants of the host, TLS at each tenant's hostname, routed to that
tenant's gateway socket only.

Two parts, because the gateways need the front door's group before they start: `frontdoor_base` (its user and
state directories) runs before the tenants, `host_frontdoor` (certificates, Caddyfile, the service) after them.
A Caddyfile or certificate change reloads the running Caddy (open long-polls finish on the old config); only a
change of its service definition restarts it.
"""

from __future__ import annotations

import shlex

from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import server

from appliance import desired
from appliance.config import HostConfig
from appliance.deploys import facts
from appliance.deploys.facts import host_command, host_step, tenants_with_users
from appliance.deploys.managed import apply_desired, os_user
from appliance.deploys.services import install_services
from appliance.frontdoor.service import frontdoor_service, reload_command
from appliance.supervision import ManagerName


@deploy("Front door: user and directories")
def frontdoor_base(config: HostConfig, manager_name: ManagerName) -> None:
    if manager_name == "systemd":
        # Debian's caddy package enables its own caddy.service (a default site on :80); ours replaces it.
        enabled = facts.expected(Command, command="systemctl is-enabled caddy.service caddy-api.service 2>/dev/null"
                                                  " || true")
        server.shell(
            name="Debian's own caddy.service off (the appliance runs its front door)",
            commands=["systemctl disable --now caddy.service caddy-api.service"],
            _if=lambda: "enabled" in (enabled() or ""),
        )
    os_user(name=f"OS user {config.frontdoor_user}", user=config.frontdoor_user, home=str(config.frontdoor_root))
    apply_desired(desired.frontdoor_base(config, tenants_with_users(config)))


@deploy("Front door")
def host_frontdoor(config: HostConfig, manager_name: ManagerName) -> None:
    tls = host_step(
        name="Front door CA and certificates (issued, renewed before expiry, or the operator's copied in)",
        config=config, step="frontdoor-setup", fact="frontdoor_tls_ok",
        current="front door certificates are current",
    )
    [caddyfile] = apply_desired([desired.caddyfile(config)])
    service = install_services(config, manager_name, [frontdoor_service(config)], tenant=None)
    # A new or changed service definition (re)started Caddy with everything current; otherwise a running Caddy
    # is told to load its files again.
    reload = server.shell(
        name="Reload the front door (its Caddyfile or certificates changed)",
        commands=[shlex.join(reload_command(config))],
        _if=lambda: (caddyfile.did_change() or tls.did_change()) and not any(op.did_change() for op in service),
    )
    server.shell(
        name="Wait until the front door answers for every tenant",
        commands=[host_command(config, "wait", "frontdoor")],
        _if=lambda: reload.did_change(),
    )


@deploy("Front door: removed")
def remove_frontdoor(config: HostConfig) -> None:
    """frontdoor.enabled false, or no tenant on the host: nothing may keep publishing through a front door."""
    host_step(name="Stop and remove the front door (not enabled here, or no tenant)", config=config,
              step="frontdoor-remove", fact="frontdoor_absent", current="no front door on this host")
