"""What a deploy leaves on a host, as data: the directories and files each part of the deploy manages (path,
owner, group, mode, content), computed from the resolved host config.

Both deploy tools apply these same lists: pyinfra through `appliance/deploys/managed.py`, Ansible through the
`appliance_paths` module (`library/`, fed by the `appliance_role` action on the controller). So a setting
reaches a file the same way in both: inventory -> `HostConfig` -> one function here -> the file on the host.
Nothing here touches a host.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance import roles
from appliance.config import HostConfig, TenantConfig
from appliance.servicespec import ServiceSpec


@dataclass(frozen=True)
class Managed:
    """A directory (content None) or a file with exactly this content, owner and mode."""

    name: str  # what it is, for the operator reading the deploy's output
    path: str
    mode: str  # octal digits, as `chmod` takes them
    user: str = "root"
    group: str = "root"
    content: str | None = None

    @property
    def is_directory(self) -> bool:
        return self.content is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def directory(name: str, path: Path | str, mode: str, user: str = "root", group: str = "root") -> Managed:
    return Managed(name, str(path), mode, user, group)


def file(name: str, path: Path | str, content: str, mode: str, user: str = "root", group: str = "root") -> Managed:
    return Managed(name, str(path), mode, user, group, content)


# -- reading the state of managed paths -------------------------------------------------------------------------

_HASHES = "@@sha1"


def path_states_command(paths: Iterable[str]) -> str:
    """One shell command for the state of every path, whatever their number: one `stat` of them all, then one
    `sha1sum` of those that are regular files (a loop over the paths started four processes per path: 0.2-0.45 s
    for a host's ~150 managed paths)."""
    listed = list(paths)
    if not all(p.startswith("/") for p in listed):
        raise ValueError(f"managed paths are absolute: {[p for p in listed if not p.startswith('/')]}")
    quoted = " ".join(shlex.quote(p) for p in listed)
    return (
        f"stat -c '%F|%U|%G|%a|%n' -- {quoted} 2>/dev/null; echo {_HASHES}; "
        f"find {quoted} -maxdepth 0 -type f -exec sha1sum {{}} + 2>/dev/null; true"
    )


def parse_path_states(paths: Iterable[str], lines: Iterable[str]) -> dict[str, list[str]]:
    """path -> [kind, user, group, mode, sha1] from `path_states_command(paths)`'s output lines: kind as `stat`
    names it ("directory", "regular file", ...) or "absent"; sha1 of a regular file's content, else ''."""
    states = {path: ["absent", "", "", "", ""] for path in paths}
    hashes: dict[str, str] = {}
    in_hashes = False
    for line in lines:
        if line == _HASHES:
            in_hashes = True
        elif in_hashes:
            digest, _, path = line.partition("  ")
            hashes[path] = digest
        elif line.count("|") >= 4:
            kind, user, group, mode, path = line.split("|", 4)
            states[path] = [kind, user, group, mode, ""]
    for path, digest in hashes.items():
        if path in states:
            states[path][4] = digest
    return states


# -- the host's config as a deploy run resolves it ---------------------------------------------------------------


def resolved_host(hosts: dict[str, dict[str, Any]], name: str, *, docker_engine: bool,
                  source_digest: str) -> HostConfig:
    """Host `name`'s config, after the whole inventory (`hosts`: name -> host data) has been cross-checked, with
    what only the host can tell decided once: the sync runtime `auto` resolves to (does a Docker engine answer
    there?), and the sources its appliance services run (a new digest restarts them)."""
    from appliance.config import inventory_configs
    from appliance.sync.container import resolve_runtime

    config = inventory_configs(hosts)[name]
    tenants = tuple(
        t.model_copy(update={"sync": t.sync.model_copy(
            update={"runtime": resolve_runtime(t.sync.runtime, docker_engine)})})
        for t in config.tenants
    )
    return config.model_copy(update={"tenants": tenants, "source_digest": source_digest})


def selected_tenants(config: HostConfig, only: str | None) -> list[str]:
    """Tenants to deploy in this run: all of the host's, or those named by `only_tenants=a,b`."""
    from appliance.config import ConfigError

    ids = [t.id for t in config.tenants]
    if not only:
        return ids
    wanted = [t.strip() for t in str(only).split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(ids))
    if unknown:
        raise ConfigError(f"host {config.name}: only_tenants names unknown tenants {unknown}; it has {ids}")
    return [t for t in ids if t in wanted]


# -- the host's bootstrap --------------------------------------------------------------------------------------


def tenant_view(config: HostConfig, tenant: TenantConfig) -> Managed:
    """The tenant's view of the host config (no other tenant in it), 0640 root and the tenant's group."""
    return file(f"{tenant.id}'s view of the host config", tenant.config_file,
                config.tenant_view(tenant.id).model_dump_json(indent=2) + "\n", "640", group=tenant.user)


def bootstrap(config: HostConfig, tenants_with_users: Iterable[str]) -> list[Managed]:
    """The install root, the config dir, every existing tenant's config view and host.json (root's alone: it
    lists every tenant and port). A tenant whose user does not exist yet gets its view with its substrate."""
    existing = set(tenants_with_users)
    return [
        directory("Appliance install root", config.common.install_root, "755"),
        directory("Appliance config dir", config.common.config_dir, "755"),
        directory("Tenants' views of the host config", config.common.config_dir / "tenants", "711"),
        *(tenant_view(config, t) for t in config.tenants if t.id in existing),
        file("Resolved host config (no secrets)", config.host_file, config.model_dump_json(indent=2) + "\n", "640"),
    ]


# The Node programs a host runs, each from roles/<role>/files: (role, install dir name, what, main package).
NODE_PROGRAMS = {
    "streams": ("streams", "Durable Streams server", "@durable-streams/server"),
    "identity": ("identity", "identity provider", "oidc-provider"),
}
NODE_PACKAGE_FILES = ("package.json", "package-lock.json")


def node_programs(config: HostConfig) -> list[str]:
    """The Node programs this host needs: the streams server always, the identity provider where a tenant runs
    its own."""
    return ["streams", *(["identity"] if any(t.identity.embedded for t in config.tenants) else [])]


def node_program(config: HostConfig, role: str) -> list[Managed]:
    """A Node program's sources, package.json and lock, as shipped in roles/<role>/files."""
    dirname, what, _ = NODE_PROGRAMS[role]
    target = config.common.install_root / dirname
    names = roles.role_files(role)
    subdirs = sorted({str(Path(name).parent) for name in names} - {"."})
    return [
        directory(f"{what} dir", target, "755"),
        *(directory(f"{what} dir {sub}", target / sub, "755") for sub in subdirs),
        *(file(f"{what} {name}", target / name, roles.role_file(role, name).read_text(), "644") for name in names),
    ]


# -- the embedded object store and the front door ---------------------------------------------------------------


def objectstore(config: HostConfig) -> list[Managed]:
    user = config.objectstore_user
    return [
        *(directory(f"Object store dir {path}", path, "700", user, user)
          for path in (config.objectstore_root, config.objectstore_data, config.objectstore_conf_dir,
                       config.objectstore_root / "run")),
        directory("Host TLS dir", config.ca_cert.parent, "755"),
    ]


def settled_tenants(config: HostConfig, users: Iterable[str]) -> set[str]:
    """The tenants whose OS users (the tenant's and its components' own) all exist among `users`: per-tenant files
    that host-wide steps write name them. A tenant new to the host, or one deployed before a component had a user
    of its own, gets those files in its own substrate, once its users step made them."""
    present = set(users)
    return {t.id for t in config.tenants if t.user in present and set(t.own_users.values()) <= present}


def tenant_upstream_dirs(config: HostConfig, tenant: TenantConfig) -> list[Managed]:
    """The directories of the tenant's front-door sockets (the gateway's, the embedded provider's): each
    component's user writes its own, the front door's group enters them, nobody else (setgid: the sockets made
    there belong to that group)."""
    return [directory(f"Front door socket dir of {tenant.id}'s {component}", path, "2750",
                      tenant.os_user(component), config.frontdoor_user)
            for component, path in tenant.frontdoor_socket_dirs.items()]


def frontdoor_base(config: HostConfig, tenants_with_users: Iterable[str]) -> list[Managed]:
    from appliance.frontdoor.service import frontdoor_log

    existing = set(tenants_with_users)
    return [
        directory("Front door state dir", config.frontdoor_state_dir, "755"),
        directory("Front door's own state (Caddy)", config.frontdoor_root, "700", config.frontdoor_user,
                  config.frontdoor_user),
        # 0711: entered on the way to a socket, never listed (the names are tenant ids).
        directory("Gateway sockets for the front door", config.frontdoor_upstreams, "711"),
        directory("Front door log dir (root only: it names every tenant's requests)", frontdoor_log(config).parent,
                  "700"),
        # Every existing tenant's socket dir, deployed by this run or not (a gateway restarted later needs it).
        *(d for t in config.tenants if t.id in existing for d in tenant_upstream_dirs(config, t)),
    ]


def caddyfile(config: HostConfig) -> Managed:
    from appliance.frontdoor.caddyfile import CADDYFILE_MODE, caddyfile_path, render_caddyfile

    return file("Front door Caddyfile", caddyfile_path(config), render_caddyfile(config), f"{CADDYFILE_MODE:o}",
                group=config.frontdoor_user)


# -- a tenant --------------------------------------------------------------------------------------------------


def tenant_substrate(tenant: TenantConfig) -> list[Managed]:
    """The tenant's root and the cluster's directories, its own user's; each component's own dir its user's
    (appliance.host.users says why each mode)."""
    from appliance.host.users import OWN_DIRS, own_dir_mode
    from appliance.secrets import PASS_THROUGH_MODE

    through = f"{PASS_THROUGH_MODE:o}"
    return [
        directory(f"Tenant root {tenant.root} (0{through})", tenant.root, through, tenant.user, tenant.user),
        directory(f"Tenant dir secrets of {tenant.id}", tenant.secrets_dir, through, tenant.user, tenant.user),
        *(directory(f"Tenant dir {path.relative_to(tenant.root)} of {tenant.id}", path, "700", tenant.user,
                    tenant.user)
          for path in (tenant.logs_dir, tenant.run_dir, tenant.pg_socket_dir, tenant.pg_data.parent,
                       tenant.backup_dir, *([] if _dir_managed(tenant, "sync") else [tenant.sync_data]))),
        *(directory(f"Tenant dir {where(tenant).relative_to(tenant.root)} of {tenant.id} "
                    f"({tenant.os_user(component)}'s)", where(tenant), f"{own_dir_mode(component):o}",
                    tenant.os_user(component), tenant.os_user(component))
          for component, (where, _) in OWN_DIRS.items() if _dir_managed(tenant, component)),
    ]


def _dir_managed(tenant: TenantConfig, component: str) -> bool:
    """Under the official sync image its container writes the sync dir (as root): only made, never owned."""
    from appliance.config import SyncRuntime

    return not (component == "sync" and tenant.sync.runtime is SyncRuntime.electric)


def postgres_files(tenant: TenantConfig, docker_bridge_gateway: str = "") -> dict[str, str]:
    """The cluster's config files, rendered (no secrets in them)."""
    from appliance.backup.archive import archive_command
    from appliance.config import SyncRuntime
    from appliance.sync.container import postgres_extra_listen

    # WAL goes to the tenant's pgBackRest repository from the first segment on (the wrapper exists before
    # Postgres starts: the backup files step runs first).
    electric = postgres_extra_listen(docker_bridge_gateway) if tenant.sync.runtime is SyncRuntime.electric else None
    return {
        "postgresql.conf": roles.render("postgres", "postgresql.conf.j2", tenant=tenant,
                                        archive_command=archive_command(tenant), electric=electric),
        "pg_hba.conf": roles.render("postgres", "pg_hba.conf.j2", tenant=tenant, electric=electric),
    }


def postgres(tenant: TenantConfig, docker_bridge_gateway: str = "") -> list[Managed]:
    return [
        file(f"Postgres {name} of {tenant.id}", tenant.pg_data / name, content, "600", tenant.user, tenant.user)
        for name, content in postgres_files(tenant, docker_bridge_gateway).items()
    ]


# -- services --------------------------------------------------------------------------------------------------


def service_definitions(manager_name: str, specs: list[ServiceSpec]) -> list[Managed]:
    """Each spec's unit (systemd) or program file (supervisord), rendered from roles/services/templates."""
    from appliance.supervision import manager

    mgr = manager(manager_name)  # type: ignore[arg-type]
    return [file(f"Service definition {spec.name}", mgr.unit_path(spec), mgr.render(spec), "644") for spec in specs]


def tenant_service_specs(config: HostConfig, tenant: TenantConfig, components: Iterable[str]) -> list[ServiceSpec]:
    """The tenant's service specs for `components`, in start order (a component it does not run is skipped)."""
    from appliance.services import tenant_services

    wanted = set(components)
    return [s for s in tenant_services(tenant, config.source_digest) if s.component in wanted]


# -- the firewall ----------------------------------------------------------------------------------------------

# The gateway is the door every caller uses; every other port of a tenant answers only root and the components
# that call it (by their OS users; those that run as the tenant's user are that user, which runs the cluster).
PORT_CLIENTS: dict[str, tuple[str, ...]] = {
    "postgres": ("postgres", "gateway", "sync", "audit", "identity", "backup"),
    "sync": ("gateway",),
    "streams": ("gateway", "agents"),
    "agents": ("gateway",),
    "identity": ("gateway",),
}


def port_users(tenant: TenantConfig, component: str, existing_users: set[str]) -> list[str]:
    """The OS users that may open `component`'s port: its clients' (a client's own user only once it exists)."""
    users = [tenant.os_user(c) for c in PORT_CLIENTS[component]]
    return list(dict.fromkeys(u for u in users if u == tenant.user or u in existing_users))


def firewall_rules(config: HostConfig, existing_users: set[str]) -> str:
    """The host's nftables ruleset: each tenant's loopback ports answer only root and their clients' users."""
    # nft resolves user names when it loads the rules, so only tenants whose user exists can be listed; a
    # tenant deployed later gets its rules on that deploy.
    tenant_ports = [
        {"port": t.port(component), "users": port_users(t, component, existing_users)}
        for t in config.tenants if t.user in existing_users for component in PORT_CLIENTS
    ]
    store_internal = [port for name, port in config.objectstore.ports().items() if name != "s3"]
    internal = store_internal if config.runs_objectstore and config.objectstore_user in existing_users else []
    # A vault host's store listens on its LAN address; from the network only S3 (TLS, per-tenant keys) may
    # be reached, never the store's internal ports.
    exposed = config.runs_objectstore and not config.objectstore.loopback
    lan_internal = store_internal if exposed else []
    frontdoor = config.runs_frontdoor and config.frontdoor_user in existing_users
    return roles.render(
        "common", "nftables.conf.j2", tenant_ports=tenant_ports, objectstore_ports=internal,
        objectstore_user=config.objectstore_user, objectstore_lan_ports=lan_internal,
        frontdoor_user=config.frontdoor_user,
        frontdoor_gateway_ports=[t.port("gateway") for t in config.tenants] if frontdoor else [],
    )


def firewall_file(config: HostConfig) -> Path:
    return config.common.config_dir / "nftables.conf"
