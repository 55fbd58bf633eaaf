"""Service definitions: what each supervised process of a host runs, as one spec rendered for any manager.

A component plugs into the appliance by adding a `ServiceSpec` here; the deploy renders it into a supervisord
program file or a systemd unit (same spec, templates in roles/services/templates/), `appliance status` probes
it, and `appliance tenant destroy` stops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from appliance.config import HostConfig, TenantConfig

ProbeKind = Literal["postgres", "http", "s3", "tcp"]


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

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"


def venv_bin(config: TenantConfig | HostConfig, program: str) -> str:
    return str(config.common.install_root / "venv" / "bin" / program)


def appliance_service(tenant: TenantConfig, component: str, verb: str, *, port: int | None = None,
                      probe: ProbeKind = "tcp", probe_path: str = "", stop_wait_s: int = 30) -> ServiceSpec:
    """A per-tenant process of the appliance's own code: `appliance <component> <verb> --tenant <id>` as the
    tenant's user, in its root, logging to its component log. host.json's directory goes into the environment
    so a host deployed with another `config_dir` still finds it; the sources' digest is added by
    `tenant_services`. Nothing secret: each command reads the secret files it needs."""
    return ServiceSpec(
        name=f"appliance-{tenant.id}-{component}",
        component=component,
        command=(venv_bin(tenant, "appliance"), component, verb, "--tenant", tenant.id),
        user=tenant.user,
        working_dir=tenant.root,
        log_file=tenant.log_file(component),
        port=port,
        probe=probe,
        probe_path=probe_path,
        environment={"APPLIANCE_CONFIG_DIR": str(tenant.common.config_dir)},
        stop_wait_s=stop_wait_s,
        tenant=tenant.id,
    )


def streams_dir(config: TenantConfig | HostConfig) -> Path:
    return config.common.install_root / "streams"


# The files of roles/streams/files/ that make up the streams server install.
STREAMS_SERVER_FILES = ("package.json", "package-lock.json", "server.mjs")
# `npm ci` would be the natural choice, but npm 11 rejects lock files that omit other platforms' optional
# native packages; `install --no-save` still resolves from the lock file and never rewrites it.
NPM_INSTALL = "npm install --omit=dev --no-save --no-audit --no-fund --loglevel=error"
STREAMS_NPM_INSTALL = NPM_INSTALL


def tenant_services(tenant: TenantConfig, source_digest: str = "") -> list[ServiceSpec]:
    """The supervised processes of one tenant, in start order.

    `source_digest` (HostConfig.source_digest) goes into the environment of the services that run the
    appliance's own code, so new sources change their unit/program file and restart them — and only them."""
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
            **common,  # type: ignore[arg-type]
        ),
        *(_with_sources(spec, source_digest) for spec in _application_services(tenant)),
    ]


def _application_services(tenant: TenantConfig) -> list[ServiceSpec]:
    """The appliance's own per-tenant services, each defined beside its code (imported here, on use, because
    those modules build on this one)."""
    from appliance.agents.service import agents_service
    from appliance.audit.service import audit_service
    from appliance.backup.schedule import backup_service
    from appliance.gateway.service import gateway_service
    from appliance.identity.service import identity_service

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
    from appliance.config import SyncRuntime

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
            user=tenant.user,
            working_dir=tenant.root,
            tenant=tenant.id,
            log_file=tenant.log_file("sync"),
            port=tenant.port("sync"),
            probe="http",
            probe_path="/v1/health",
            environment=_ours(source_digest),
        )
    ]


def objectstore_service(host: HostConfig) -> ServiceSpec:
    from appliance.objectstore.seaweed import weed_argv, weed_binary, weed_environment

    weed = Path(venv_bin(host, weed_binary().name))
    # Exactly this environment and nothing inherited: AWS_* in weed's environment would add an admin identity
    # and WEED_* would override security.toml.
    clean_env = ["env", "-i", *(f"{k}={v}" for k, v in weed_environment(host).items())]
    return ServiceSpec(
        name="appliance-objectstore",
        component="objectstore",
        command=(*clean_env, *weed_argv(host, weed)),
        user=host.objectstore_user,
        # weed reads security.toml (the JWT keys) from its working directory.
        working_dir=host.objectstore_conf_dir,
        log_file=host.objectstore_root / "objectstore.log",
        port=host.objectstore.s3_port,
        probe="s3",
        # weed mini puts its gRPC unix sockets in /tmp whatever TMPDIR says; another local user could
        # otherwise claim those paths before the store starts.
        private_tmp=True,
    )


def host_services(host: HostConfig) -> list[ServiceSpec]:
    """Every supervised process on a host: the shared store first, then each tenant's."""
    services = [objectstore_service(host)] if host.runs_objectstore else []
    for tenant in host.tenants:
        services.extend(tenant_services(tenant, host.source_digest))
    if host.runs_frontdoor:
        from appliance.frontdoor.service import frontdoor_service

        # Last: it routes to the gateways above.
        services.append(frontdoor_service(host))
    return services
