"""The host's services: every supervised process of a host, in start order (`host_services`,
`tenant_services`), and the definitions of the upstream programs that have no package of their own here
(Postgres, the streams server) and of the embedded sync engine's process.

Dependency direction: this module builds on `appliance.servicespec` (the spec) and on each component's own
service module (appliance/<component>/service.py, backup/schedule.py), which build on `appliance.servicespec`
only, never on this module. The deploy renders the list, `appliance status` probes it, and
`appliance tenant destroy` stops it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path

from appliance.agents.service import agents_service
from appliance.audit.service import audit_service
from appliance.backup.schedule import backup_service
from appliance.config import HostConfig, SyncRuntime, TenantConfig
from appliance.gateway.service import gateway_service
from appliance.identity.service import identity_service
from appliance.roles import role_file
from appliance.servicespec import OBJECTSTORE_SERVICE, ServiceSpec, venv_bin


def streams_dir(config: TenantConfig | HostConfig) -> Path:
    return config.common.install_root / "streams"


# The files of roles/streams/files/ that make up the streams server install.
STREAMS_SERVER_FILES = ("package.json", "package-lock.json", "server.mjs")
# `npm ci` would be the natural choice, but npm 11 rejects lock files that omit other platforms' optional
# native packages; `install --no-save` still resolves from the lock file and never rewrites it.
NPM_INSTALL = "npm install --omit=dev --no-save --no-audit --no-fund --loglevel=error"


@functools.cache
def streams_server_digest() -> str:
    """The streams server as installed (its script and the packages its lock pins), in its program's environment:
    a new server changes the program file and restarts the tenants' streams servers, which the appliance's own
    source digest does not (the streams server is not the appliance's code, and nothing else restarts it)."""
    digest = hashlib.sha256()
    for name in STREAMS_SERVER_FILES:
        digest.update(name.encode() + b"\0" + role_file("streams", name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def tenant_services(tenant: TenantConfig, source_digest: str = "") -> list[ServiceSpec]:
    """The supervised processes of one tenant, in start order.

    `source_digest` (HostConfig.source_digest) goes into the environment of the services that run the
    appliance's own code, so new sources change their unit/program file and restart them — and only them."""
    return _ordered([_confined(tenant, spec) for spec in _tenant_services(tenant, source_digest)],
                    first=(OBJECTSTORE_SERVICE,))


def _ordered(specs: list[ServiceSpec], first: tuple[str, ...] = ()) -> list[ServiceSpec]:
    """Each spec's systemd After=: `first`'s units, and those of `specs` that start before it (START_ORDER). A
    tenant's Postgres comes after the host's store, which may not be on this host (then systemd ignores it)."""
    units = [*(f"{name}.service" for name in first)]
    return [replace(spec, after=(*units, *(o.unit_name for o in specs if o.priority < spec.priority)))
            for spec in specs]


def _confined(tenant: TenantConfig, spec: ServiceSpec) -> ServiceSpec:
    """What a tenant's process may write under systemd: its tenant's root (and the gateway and the provider their
    front-door socket dirs), nothing else; and its component's memory limit."""
    socket_dir = tenant.frontdoor_socket_dirs.get(spec.component) if tenant.frontdoor.enabled else None
    sockets = (socket_dir,) if socket_dir else ()
    return replace(spec, writable=(tenant.root, *sockets), memory_max=getattr(tenant, spec.component).memory_max)


def _tenant_services(tenant: TenantConfig, source_digest: str) -> list[ServiceSpec]:
    bind = tenant.common.bind_address
    common = {"user": tenant.user, "working_dir": tenant.root, "tenant": tenant.id}
    return [
        ServiceSpec(
            name=f"appliance-{tenant.id}-postgres",
            component="postgres",
            command=(str(tenant.pg_bin("postgres")), "-D", str(tenant.pg_data)),
            log_file=tenant.log_file("postgres"),
            port=tenant.port("postgres"),
            probe="postgres",
            # SIGINT is Postgres's fast shutdown: it rolls back open transactions instead of waiting on clients.
            stop_signal="INT",
            stop_wait_s=60,
            **common,  # type: ignore[arg-type]
        ),
        *_sync_services(tenant, source_digest),
        ServiceSpec(
            name=f"appliance-{tenant.id}-streams",
            component="streams",
            command=(
                "/usr/bin/node", str(streams_dir(tenant) / "server.mjs"),
                "--host", bind, "--port", str(tenant.port("streams")),
                "--data-dir", str(tenant.streams_data),
                "--long-poll-timeout", str(tenant.streams.long_poll_timeout_ms),
            ),
            log_file=tenant.log_file("streams"),
            port=tenant.port("streams"),
            probe="tcp",
            environment={"APPLIANCE_STREAMS_SERVER": streams_server_digest()},
            # Its own user, sharing what it writes with its group (the tenant's user, whose backups read the
            # streams and open their LMDB lock file).
            umask="007",
            **{**common, "user": tenant.os_user("streams")},  # type: ignore[arg-type]
        ),
        *(_with_sources(spec, source_digest) for spec in _application_services(tenant)),
    ]


def _application_services(tenant: TenantConfig) -> list[ServiceSpec]:
    """The appliance's own per-tenant services, each defined beside its code."""
    # The provider before the gateway: a login the gateway starts goes to it.
    identity = [identity_service(tenant)] if tenant.identity.embedded else []
    return [*identity, gateway_service(tenant), agents_service(tenant), audit_service(tenant),
            backup_service(tenant)]


def _with_sources(spec: ServiceSpec, source_digest: str) -> ServiceSpec:
    return replace(spec, environment={**spec.environment, **_ours(source_digest)})


def _ours(source_digest: str) -> dict[str, str]:
    return {"APPLIANCE_SOURCE_DIGEST": source_digest} if source_digest else {}


def _sync_services(tenant: TenantConfig, source_digest: str) -> list[ServiceSpec]:
    """The embedded sync engine as a supervised process; the official image runs as a container instead."""
    if tenant.sync.runtime is SyncRuntime.electric:
        return []
    # The URL carries no password: the engine reads it from the secret file and merges it in.
    url = f"postgresql://sync@{tenant.common.bind_address}:{tenant.port('postgres')}/{tenant.postgres.database}"
    return [
        ServiceSpec(
            name=f"appliance-{tenant.id}-sync",
            component="sync",
            command=(
                venv_bin(tenant, "appliance"), "sync", "serve",
                "--database-url", url,
                "--database-password-file", str(tenant.secret_path("db_sync_password")),
                "--secret-file", str(tenant.secret_path("sync_secret")),
                "--host", tenant.common.bind_address,
                "--port", str(tenant.port("sync")),
                "--data-dir", str(tenant.sync_data),
                "--long-poll-timeout", str(tenant.sync.long_poll_timeout_ms),
                "--publication", tenant.sync.publication,
                "--slot", tenant.sync.slot,
                "--chunk-bytes", str(tenant.sync.chunk_bytes),
            ),
            user=tenant.os_user("sync"),
            working_dir=tenant.root,
            tenant=tenant.id,
            log_file=tenant.log_file("sync"),
            port=tenant.port("sync"),
            probe="http",
            probe_path="/v1/health",
            environment=_ours(source_digest),
        )
    ]


def host_services(host: HostConfig) -> list[ServiceSpec]:
    """Every supervised process on a host: the shared store first, then each tenant's."""
    # The store's and the front door's modules are imported on use: they pull in cryptography and the store's
    # configuration, which a host running neither (and every caller of `tenant_services`) does not need.
    services: list[ServiceSpec] = []
    if host.runs_objectstore:
        from appliance.objectstore.service import objectstore_service

        services.append(objectstore_service(host))
    for tenant in host.tenants:
        services.extend(tenant_services(tenant, host.source_digest))
    if host.runs_frontdoor:
        from appliance.frontdoor.service import frontdoor_service

        # Last: it routes to the gateways above (its priority; no After= on them under systemd, which would change
        # its unit, and restart it for every tenant, whenever a tenant is added).
        services.append(frontdoor_service(host))
    return services
