"""Host-side changes to a deployed front door outside a deploy: a tenant destroyed leaves it at once."""

from __future__ import annotations

import shutil
import subprocess

from appliance.config import HostConfig, TenantConfig
from appliance.frontdoor.caddyfile import caddyfile_path, render_caddyfile
from appliance.frontdoor.service import frontdoor_service, reload_command
from appliance.objectstore.files import write_atomic
from appliance.supervision import detect, manager


def forget_tenant(before: HostConfig, after: HostConfig, tenant: TenantConfig) -> list[str]:
    """Stop routing to `tenant` (`after` is the host without it): its certificate and socket directory go, the
    front door reloads without it, or stops if no tenant is left. Lines to print, one per thing done."""
    if not before.runs_frontdoor:
        return []
    done: list[str] = []
    for path in before.frontdoor_cert(tenant):
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
    if tenant.gateway_socket.parent.exists():
        shutil.rmtree(tenant.gateway_socket.parent)
        done.append(f"removed {tenant.gateway_socket.parent}")
    spec = frontdoor_service(before)
    mgr = manager(detect(before.common.service_manager))
    running = mgr.states([spec])[spec.name].running
    if after.runs_frontdoor:
        write_atomic(caddyfile_path(after), render_caddyfile(after).encode(), 0o644)
        if running:
            subprocess.run(reload_command(after), check=True, capture_output=True)
        done.append(f"front door no longer routes {', '.join(tenant.hostnames)}")
    else:
        subprocess.run(mgr.stop_command(spec), capture_output=True)
        mgr.unit_path(spec).unlink(missing_ok=True)
        subprocess.run(mgr.remove_command([spec]), capture_output=True)
        done.append("front door stopped (no tenant left on this host)")
    return done
