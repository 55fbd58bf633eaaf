"""`appliance status`: per tenant, per component — running, answering (a real probe), pid, port, uptime.

This module owns the report and its rows (`ComponentStatus`), the generic probes (TCP, HTTP) and which probe
each component gets. Dependency direction: it builds on `appliance.services` (what runs) and on each
component's own status module (appliance/<component>/status.py), which say what that component's health is as
plain data and never import this module. Commands that wait for health (`appliance host wait`, restores) use
`component_status`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from appliance import pg
from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.services import host_services
from appliance.servicespec import ServiceSpec
from appliance.supervision import ProcessState, detect, manager


@dataclass
class ComponentStatus:
    healthy: bool
    running: bool
    pid: int | None
    port: int | None
    uptime_s: int | None
    detail: str


def _tcp_probe(spec: ServiceSpec, host: str) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, spec.port or 0), timeout=2):
            return True, f"accepting connections on {host}:{spec.port}"
    except OSError as exc:
        return False, f"no answer on {host}:{spec.port}: {exc}"


def _http_probe(spec: ServiceSpec, host: str, path: str) -> tuple[bool, str]:
    url = f"http://{host}:{spec.port}{path}"
    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError as exc:
        return False, f"GET {path} failed: {exc}"
    if response.status_code >= 500:
        return False, f"GET {path} answered {response.status_code}"
    return True, f"GET {path} answered {response.status_code}"


def _probe(spec: ServiceSpec, host: HostConfig) -> tuple[bool, str]:
    bind = host.common.bind_address
    if spec.component == "postgres" and spec.tenant:
        from appliance.host.postgres import probe

        return probe(host.tenant(spec.tenant))
    if spec.component == "objectstore":
        from appliance.objectstore.probe import probe_store

        result = probe_store(host)
        return result.healthy, result.detail
    if spec.component == "audit" and spec.tenant:
        # The shipper has no port: its health is the trail's lag and its last store error.
        from appliance.audit.status import audit_status

        trail = audit_status(host.tenant(spec.tenant))
        return bool(trail["healthy"]), str(trail["detail"])
    if spec.component == "backup" and spec.tenant:
        # The scheduler has no port: its health is what it produces (backups, archived WAL, drills).
        from appliance.backup.status import backup_status, describe

        backup = backup_status(host.tenant(spec.tenant))
        return bool(backup["healthy"]), describe(backup)
    if spec.component == "frontdoor":
        from appliance.frontdoor.status import probe_frontdoor

        return probe_frontdoor(host)
    if spec.component == "sync" and spec.tenant:
        return _sync_probe(spec, host.tenant(spec.tenant))
    if spec.component == "identity" and spec.tenant:
        from appliance.identity.provider import issuer_url

        answering, said = _http_probe(spec, bind, spec.probe_path)
        return answering, f"issuer {issuer_url(host.tenant(spec.tenant))}; {said}"
    if spec.probe == "http":
        return _http_probe(spec, bind, spec.probe_path)
    if spec.component == "streams":
        # The streams server has no health route; any HTTP answer to a stream path proves it serves.
        return _http_probe(spec, bind, "/__appliance_health")
    return _tcp_probe(spec, bind)


def _sync_probe(spec: ServiceSpec, tenant: TenantConfig) -> tuple[bool, str]:
    """The engine answers /v1/health, and its slot exists, is not lost, streams, and shows its retained WAL."""
    from appliance.sync.status import sync_status

    answering, said = _http_probe(spec, tenant.common.bind_address, "/v1/health")
    if not answering:
        return False, said
    slot = sync_status(pg.dsn(tenant, "sync"), tenant.sync.slot, tenant.sync_data)
    return bool(slot["healthy"]), slot["detail"]


def _electric_container(host: HostConfig, tenant: TenantConfig) -> dict[str, ComponentStatus]:
    """The official image's container, where it is the tenant's sync runtime."""
    if tenant.sync.runtime is not SyncRuntime.electric:
        return {}
    from appliance.sync.container import container_state

    running, pid, detail = container_state(tenant)
    healthy = running
    if running:
        probe = ServiceSpec(name="electric", component="sync", command=(), user="", working_dir=tenant.root,
                            log_file=tenant.log_file("sync"), port=tenant.port("sync"))
        healthy, detail = _sync_probe(probe, tenant)
    return {"sync": ComponentStatus(healthy, running, pid, tenant.port("sync"), None, detail)}


# Probes for components that are not processes of their own (buckets, slots) plug in here, keyed by name.
ExtraProbe = Callable[[HostConfig, TenantConfig], dict[str, ComponentStatus]]


def _buckets(host: HostConfig, tenant: TenantConfig) -> dict[str, ComponentStatus]:
    """The tenant's buckets, reached with the tenant's own keys, audit bucket locked as configured."""
    from appliance.objectstore.probe import probe_tenant

    result = probe_tenant(host, tenant)
    return {"buckets": ComponentStatus(result.healthy, result.healthy, None, None, None, result.detail)}


EXTRA_PROBES: list[ExtraProbe] = [_buckets, _electric_container]


def component_status(spec: ServiceSpec, state: ProcessState, host: HostConfig) -> ComponentStatus:
    if state.running:
        healthy, detail = _probe(spec, host)
    else:
        healthy, detail = False, f"not running ({state.state}); log: {spec.log_file}"
    return ComponentStatus(healthy, state.running, state.pid, spec.port, state.uptime_s, detail)


def wait_healthy(host: HostConfig, specs: list[ServiceSpec], timeout_s: float,
                 on_healthy: Callable[[ServiceSpec, float, str], None] | None = None) -> dict[str, str]:
    """Poll until every spec's component answers its probe or `timeout_s` passes; {name: last detail} of those
    still unhealthy (empty when all are). `on_healthy(spec, seconds, detail)` reports each as it comes up."""
    mgr = manager(detect(host.common.service_manager))
    started = time.monotonic()
    pending = {s.name: s for s in specs}
    last: dict[str, str] = {}
    while pending:
        states = mgr.states(list(pending.values()))
        for name, spec in list(pending.items()):
            status = component_status(spec, states[name], host)
            last[name] = status.detail
            if status.healthy:
                del pending[name]
                if on_healthy:
                    on_healthy(spec, time.monotonic() - started, status.detail)
        if not pending or time.monotonic() - started > timeout_s:
            break
        time.sleep(0.1)
    return {name: last[name] for name in pending}


def collect(host: HostConfig) -> dict[str, Any]:
    specs = host_services(host)
    states = manager(detect(host.common.service_manager)).states(specs)
    report: dict[str, Any] = {"host": {"name": host.name, "components": {}}, "tenants": {}}
    for spec in specs:
        # The OS user it runs as: least privilege inside a tenant is visible, not assumed.
        status = {**asdict(component_status(spec, states[spec.name], host)), "user": spec.user}
        if spec.component == "frontdoor":
            from appliance.frontdoor.status import frontdoor_details

            # Listeners and certificate expiry beside the health, for operators and their monitoring.
            status.update(frontdoor_details(host))
        if spec.tenant is None:
            report["host"]["components"][spec.component] = status
        else:
            tenant = report["tenants"].setdefault(spec.tenant, {"components": {}})
            tenant["components"][spec.component] = status
    for tenant in host.tenants:
        if host.runs_frontdoor:
            report["tenants"].setdefault(tenant.id, {"components": {}})["url"] = tenant.url
        components = report["tenants"].setdefault(tenant.id, {"components": {}})["components"]
        for extra in EXTRA_PROBES:
            components.update({k: asdict(v) for k, v in extra(host, tenant).items()})
    return report


def all_healthy(report: dict[str, Any]) -> bool:
    components = list(report["host"]["components"].values())
    for tenant in report["tenants"].values():
        components.extend(tenant["components"].values())
    return all(c.get("healthy") for c in components)
