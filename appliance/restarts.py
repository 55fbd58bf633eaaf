"""Restarting some of a tenant's components, one after the other, each answering its probe before the next.

Used where a running component must pick up something it reads only at start: a rotated secret
(appliance.rotation.steps) and new group memberships of the tenant's user (`appliance host users`)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable

from appliance.config import HostConfig, TenantConfig

Say = Callable[[str], None]


class RestartError(RuntimeError):
    """A component that did not restart, or did not answer its probe after it (the message names its log)."""


def restart_components(host: HostConfig, tenant: TenantConfig, components: Iterable[str], say: Say) -> list[str]:
    """Restart the tenant's `components` in order; returns those restarted (a component the tenant does not run,
    e.g. identity without an embedded provider, is skipped)."""
    from appliance.services import tenant_services
    from appliance.status import wait_healthy
    from appliance.supervision import detect, manager

    specs = {s.component: s for s in tenant_services(tenant, host.source_digest)}
    mgr = manager(detect(host.common.service_manager))
    done = []
    for component in components:
        spec = specs.get(component)
        if spec is None:
            continue
        started = time.monotonic()
        result = subprocess.run(mgr.restart_command(spec), capture_output=True, text=True)
        if result.returncode != 0:
            raise RestartError(f"restarting {spec.name} failed: {(result.stderr or result.stdout).strip()}")
        failed = wait_healthy(host, [spec], host.common.health_timeout_s)
        if failed:
            raise RestartError(f"{spec.name} is not healthy after the restart ({failed[spec.name]}); "
                               f"log: {spec.log_file}")
        say(f"  restarted {component} ({time.monotonic() - started:.1f}s to healthy)")
        done.append(component)
    return done


def running_components(host: HostConfig, tenant: TenantConfig, user: str) -> list[str]:
    """The tenant's components that run as OS user `user` and are running now."""
    from appliance.services import tenant_services
    from appliance.supervision import detect, manager

    specs = [s for s in tenant_services(tenant, host.source_digest) if s.user == user]
    states = manager(detect(host.common.service_manager)).states(specs)
    return [spec.component for spec in specs if states[spec.name].running]
