"""Host-side changes to a deployed front door outside its normal deploy: a tenant destroyed leaves it at once,
and a front door switched off (frontdoor.enabled false, or no tenant left) stops publishing anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from appliance.config import HostConfig, TenantConfig
from appliance.frontdoor.caddyfile import caddyfile_path, render_caddyfile
from appliance.frontdoor.service import frontdoor_service, reload_command
from appliance.objectstore.files import write_atomic
from appliance.supervision import detect, manager


def _upstreams(host: HostConfig) -> Path:
    return host.frontdoor_root.parent / "upstreams"


def frontdoor_present(host: HostConfig) -> bool:
    """Something of a front door is on this host (its service, its routing or its gateways' socket dirs)."""
    spec = frontdoor_service(host)
    unit = manager(detect(host.common.service_manager)).unit_path(spec)
    certs = host.frontdoor_default_cert[0].parent
    return unit.exists() or caddyfile_path(host).exists() or certs.exists() or _upstreams(host).exists()


def remove_frontdoor(host: HostConfig) -> list[str]:
    """Stop the front door and remove what routes or serves through it; the CA stays (clients that installed it
    keep trusting a front door enabled again). Lines to print, one per thing done."""
    done: list[str] = []
    spec = frontdoor_service(host)
    mgr = manager(detect(host.common.service_manager))
    unit = mgr.unit_path(spec)
    if unit.exists():
        # Stopped and disabled while its definition is still there, then the definition goes.
        subprocess.run(mgr.stop_command(spec), capture_output=True)
        subprocess.run(mgr.remove_command([spec]), capture_output=True)
        unit.unlink(missing_ok=True)
        subprocess.run(mgr.remove_command([spec]), capture_output=True)
        done.append("front door stopped")
    for path in (caddyfile_path(host), host.frontdoor_default_cert[0].parent, _upstreams(host)):
        if path.is_dir():
            shutil.rmtree(path)
            done.append(f"removed {path}")
        elif path.exists():
            path.unlink()
            done.append(f"removed {path}")
    return done


def forget_tenant(before: HostConfig, after: HostConfig, tenant: TenantConfig) -> list[str]:
    """Stop routing to `tenant` (`after` is the host without it, already written): the front door reloads
    without it, or is removed when no tenant is left; then its certificate and socket directory go."""
    if not before.runs_frontdoor:
        return []
    if not after.runs_frontdoor:
        return [*remove_frontdoor(before), "front door removed (no tenant left on this host)"]
    done: list[str] = []
    write_atomic(caddyfile_path(after), render_caddyfile(after).encode(), 0o640, _caddyfile_owner(after))
    spec = frontdoor_service(before)
    if manager(detect(before.common.service_manager)).states([spec])[spec.name].running:
        result = subprocess.run(reload_command(after), capture_output=True, text=True)
        if result.returncode != 0:
            done.append(f"warning: the front door did not reload ({result.stderr.strip()[-300:]}); it still routes "
                        f"{', '.join(tenant.hostnames)} to a gateway that is gone: run the deploy to fix it")
            return done
    done.append(f"front door no longer routes {', '.join(tenant.hostnames)}")
    for path in before.frontdoor_cert(tenant):
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
    if tenant.gateway_socket.parent.exists():
        shutil.rmtree(tenant.gateway_socket.parent)
        done.append(f"removed {tenant.gateway_socket.parent}")
    return done


def _caddyfile_owner(host: HostConfig) -> tuple[int, int] | None:
    import grp

    try:
        return 0, grp.getgrnam(host.frontdoor_user).gr_gid
    except KeyError:
        return None
