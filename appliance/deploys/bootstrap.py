"""Host bootstrap, once per host: packages, the appliance's venv and sources, the streams server, supervisord."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Which
from pyinfra.operations import apt, files, server

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import FileContent, Supervisord, tenants_with_users
from appliance.deploys.managed import managed_directory, managed_file
from appliance.deploys.source import requirements_digest, tarball
from appliance.roles import role_file, role_files
from appliance.services import NPM_INSTALL
from appliance.supervision import SUPERVISOR_CONF, SUPERVISORD_SHUTTING_DOWN, SUPERVISORD_STOP_WAIT_S, ManagerName

# Debian's python3 builds the host venv: it is what every Debian 12 host has, whatever the controller runs.
HOST_PYTHON = "/usr/bin/python3"


def apt_packages(config: HostConfig, manager: ManagerName) -> list[str]:
    packages = [
        f"postgresql-{_postgres_version(config)}",
        "postgresql-contrib",
        "pgbackrest",
        "nodejs",
        "python3-venv",
        "nftables",
        "ca-certificates",
    ]
    if manager == "supervisor":
        packages.append("supervisor")
    if config.runs_frontdoor:
        packages.append("caddy")
    return packages


def _postgres_version(config: HostConfig) -> int:
    from appliance.config import PostgresSettings

    versions = {t.postgres.version for t in config.tenants} or {PostgresSettings.defaults()["version"]}
    if len(versions) != 1:
        raise ValueError(f"host {config.name}: tenants ask for different postgres versions {sorted(versions)}")
    return versions.pop()


@operation()
def appliance_sources(config: HostConfig):
    """Ship the appliance's sources to <install_root>/src and install them into its venv, when they changed."""
    root = config.common.install_root
    data, digest = tarball()
    if host.get_fact(FileContent, path=f"{root}/src/.source-sha256") == digest:
        host.noop("appliance sources are current")
        return
    yield from files.put._inner(src=io.BytesIO(data), dest=f"{root}/src.tar.gz", mode="600")
    q = shlex.quote
    yield (
        f"rm -rf {q(str(root))}/src.new && mkdir -p {q(str(root))}/src.new && "
        f"tar -xzf {q(str(root))}/src.tar.gz -C {q(str(root))}/src.new && "
        f"rm -rf {q(str(root))}/src && mv {q(str(root))}/src.new {q(str(root))}/src && "
        f"rm -f {q(str(root))}/src.tar.gz"
    )
    venv = root / "venv"
    lock_digest = requirements_digest()
    # Dependencies are reinstalled only when the lock changes; our own package is an editable install of
    # src/, so roles/ stays beside it and a code change needs no pip run.
    yield (
        f"if [ \"$(cat {venv}/.requirements-sha256 2>/dev/null)\" != {lock_digest} ]; then "
        f"{venv}/bin/pip install --quiet --disable-pip-version-check -r {root}/src/requirements.lock && "
        f"echo {lock_digest} > {venv}/.requirements-sha256; fi"
    )
    yield (
        f"{venv}/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation "
        f"-e {root}/src"
    )
    yield f"echo {digest} > {root}/src/.source-sha256"


@operation()
def supervisord_running():
    """Start supervisord when it is not running (hosts where systemd is not PID 1)."""
    state = host.get_fact(Supervisord)
    if state == "running":
        host.noop("supervisord is running")
        return
    if state == "stopping":
        # One that is shutting down must be gone before another can take its socket.
        yield (
            f"for i in $(seq {SUPERVISORD_STOP_WAIT_S * 10}); do "
            f"supervisorctl pid 2>&1 | grep -q {SUPERVISORD_SHUTTING_DOWN} || exit 0; sleep 0.1; done; "
            f"echo 'supervisord is still shutting down after {SUPERVISORD_STOP_WAIT_S} s: "
            "wait for it (supervisorctl status) and deploy again' >&2; exit 1"
        )
    yield f"supervisord -c {SUPERVISOR_CONF}"
    # supervisord daemonizes before its socket is up; wait so the next step can talk to it.
    yield "for i in $(seq 50); do supervisorctl pid >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"


def tenant_view(config: HostConfig, tenant: TenantConfig) -> OperationMeta:
    """The tenant's view of the host config (no other tenant in it), 0640 root and the tenant's group."""
    return managed_file(
        f"{tenant.id}'s view of the host config", str(tenant.config_file),
        config.tenant_view(tenant.id).model_dump_json(indent=2) + "\n", mode="640", group=tenant.user,
    )


def node_program(target: Path, role: str, what: str, main_package: str) -> None:
    """A Node program shipped in roles/<role>/files (sources, package.json and its lock) installed in `target`;
    `npm install` runs when the package files changed or the main package is missing."""
    managed_directory(f"{what} dir", str(target), mode="755")
    names = role_files(role)
    for subdir in sorted({str(Path(name).parent) for name in names} - {"."}):
        managed_directory(f"{what} dir {subdir}", str(target / subdir), mode="755")
    changes = []
    for name in names:
        op = managed_file(f"{what} {name}", str(target / name), role_file(role, name).read_text(), mode="644")
        if name in ("package.json", "package-lock.json"):
            changes.append(op)
    server.shell(
        name=f"Install the {what} (pinned by package.json and package-lock.json)",
        commands=[f"cd {target} && {NPM_INSTALL}"],
        _if=lambda: any(op.did_change() for op in changes)
        or not host.get_fact(FileContent, path=f"{target}/node_modules/{main_package}/package.json"),
    )


# Per host: the operations whose change means this deploy changed what the host runs (new sources or new
# resolved config); each tenant's trail records such a deploy as an operator action.
DEPLOY_CHANGES: dict[str, list[OperationMeta]] = {}


@deploy("Host bootstrap")
def host_bootstrap(config: HostConfig, manager: ManagerName) -> None:
    apt.packages(
        name="Install system packages (postgres, pgbackrest, node, supervisor, nftables)",
        packages=apt_packages(config, manager),
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )
    if not host.get_fact(Which, command="npm"):
        # Nodesource's nodejs ships npm; Debian's splits it out.
        apt.packages(name="Install npm", packages=["npm"], no_recommends=True)

    root = config.common.install_root
    managed_directory("Appliance install root", str(root), mode="755")
    managed_directory("Appliance config dir", str(config.common.config_dir), mode="755")
    server.shell(
        name="Create the appliance venv",
        commands=[f"{HOST_PYTHON} -m venv {root}/venv && {root}/venv/bin/pip install --quiet -U pip setuptools"],
        _if=lambda: not host.get_fact(FileContent, path=f"{root}/venv/pyvenv.cfg"),
    )
    sources = appliance_sources(name="Install the appliance package into its venv", config=config)
    # Each tenant's services read their own view of the host config: written here, before host.json becomes
    # root's, for every tenant whose user exists (selected by this run or not: an only_tenants deploy or an
    # upgrade must not leave a running tenant unable to read its config); a new tenant's in its substrate.
    managed_directory("Tenants' views of the host config", str(config.common.config_dir / "tenants"), mode="711")
    existing = tenants_with_users(config)
    for tenant in config.tenants:
        if tenant.id in existing:
            tenant_view(config, tenant)
    # Root's alone: it lists every tenant and port of the host.
    resolved = managed_file(
        "Resolved host config (no secrets)", str(config.host_file), config.model_dump_json(indent=2) + "\n",
        mode="640",
    )
    DEPLOY_CHANGES[host.name] = [sources, resolved]

    node_program(root / "streams", "streams", "Durable Streams server", "@durable-streams/server")
    if any(tenant.identity.embedded for tenant in config.tenants):
        node_program(root / "identity", "identity", "identity provider", "oidc-provider")
    if manager == "supervisor":
        supervisord_running(name="Ensure supervisord is running")
