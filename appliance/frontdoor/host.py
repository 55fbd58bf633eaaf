"""Host-side changes to a deployed front door outside its normal deploy: a tenant destroyed leaves it at once,
and a front door switched off (frontdoor.enabled false, or no tenant left) stops publishing anything."""

from __future__ import annotations

import shutil
import subprocess

from appliance.config import HostConfig, TenantConfig
from appliance.frontdoor.caddyfile import caddyfile_path, write_caddyfile
from appliance.frontdoor.service import frontdoor_service, reload_command
from appliance.supervision import detect, manager, remove_services


def frontdoor_present(host: HostConfig) -> bool:
    """Something of a front door is on this host (its service, its routing or its gateways' socket dirs)."""
    spec = frontdoor_service(host)
    unit = manager(detect(host.common.service_manager)).unit_path(spec)
    return (unit.exists() or caddyfile_path(host).exists() or host.frontdoor_certs_dir.exists()
            or host.frontdoor_upstreams.exists())


def remove_frontdoor(host: HostConfig) -> list[str]:
    """Stop the front door and remove what routes or serves through it; the CA stays (clients that installed it
    keep trusting a front door enabled again). Lines to print, one per thing done."""
    done: list[str] = []
    spec = frontdoor_service(host)
    mgr = manager(detect(host.common.service_manager))
    if mgr.unit_path(spec).exists():
        remove_services(mgr, [spec])
        done.append("front door stopped")
    for path in (caddyfile_path(host), host.frontdoor_certs_dir, host.frontdoor_upstreams):
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
    write_caddyfile(after)
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
    for path in {tenant.gateway_socket.parent, tenant.identity_socket.parent}:
        if path.exists():
            shutil.rmtree(path)
            done.append(f"removed {path}")
    return done

