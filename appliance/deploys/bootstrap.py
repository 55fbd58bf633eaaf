"""Host bootstrap, once per host: packages, the appliance's venv and sources, the streams server, supervisord."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.facts.server import Date
from pyinfra.operations import apt, files, server
from pyinfra.operations.apt import APT_UPDATE_FILENAME

from appliance import desired, install_steps
from appliance.config import HostConfig
from appliance.deploys import bundle, facts
from appliance.deploys.facts import FileContent, MissingDebs, Supervisord, tenants_with_users
from appliance.deploys.managed import apply_desired
from appliance.deploys.source import requirements_digest, source_digest, tarball
from appliance.supervision import ManagerName

APT_CACHE_S = 24 * 3600


@operation()
def system_packages(packages: tuple[str, ...]):
    """pyinfra's `apt.packages(update=True, cache_time=a day, no_recommends=True)`, deciding as it does (apt's
    lists updated within the day by its stamp, every package installed) from the run's snapshot while nothing
    changed; when there is something to do, or anything changed earlier in the run, that operation itself."""
    if facts.unchanged():
        stamp = facts.fact(File, path=APT_UPDATE_FILENAME)
        # pyinfra's own comparison: the stamp's mtime and the host's clock both taken as UTC.
        now = datetime.fromtimestamp(facts.fact(Date).timestamp(), UTC).replace(tzinfo=None)
        fresh = bool(stamp and stamp["mtime"] and stamp["mtime"] > now - timedelta(seconds=APT_CACHE_S))
        if fresh and not facts.fact(MissingDebs, packages=packages):
            host.noop("apt is up to date and every package is installed")
            return
    yield from apt.packages._inner(packages=list(packages), update=True, cache_time=APT_CACHE_S,
                                   no_recommends=True)


@operation()
def appliance_sources(config: HostConfig):
    """Ship the appliance's sources to <install_root>/src and install them into its venv, when they changed."""
    digest = source_digest()
    if facts.fact(FileContent, path=str(install_steps.sources_marker(config))) == digest:
        host.noop("appliance sources are current")
        return
    data, _ = tarball()
    yield from files.put._inner(src=io.BytesIO(data), dest=str(install_steps.sources_upload(config)), mode="600")
    yield from install_steps.sources_commands(config, digest, requirements_digest())


@operation()
def supervisord_running():
    """Start supervisord when it is not running (hosts where systemd is not PID 1)."""
    state = facts.fact(Supervisord)
    if state == "running":
        host.noop("supervisord is running")
        return
    yield from install_steps.supervisord_start_commands(stopping=state == "stopping")


def node_program(config: HostConfig, role: str) -> None:
    """A Node program shipped in roles/<role>/files (sources, package.json and its lock) installed on the host;
    `npm install` runs when the package files changed or the main package is missing."""
    dirname, what, main_package = desired.NODE_PROGRAMS[role]
    target = config.common.install_root / dirname
    items = desired.node_program(config, role)
    ops = apply_desired(items)
    changes = [op for item, op in zip(items, ops, strict=True)
               if Path(item.path).name in desired.NODE_PACKAGE_FILES and Path(item.path).parent == target]
    if config.common.bundle:
        bundle.node_modules(config, role, target, what)
        return
    installed = facts.expected(FileContent, path=f"{target}/node_modules/{main_package}/package.json")
    server.shell(
        name=f"Install the {what} (pinned by package.json and package-lock.json)",
        commands=[install_steps.npm_install_command(target)],
        _if=lambda: any(op.did_change() for op in changes) or not installed(),
    )


# Per host: the operations whose change means this deploy changed what the host runs (new sources or new
# resolved config); each tenant's trail records such a deploy as an operator action.
DEPLOY_CHANGES: dict[str, list[OperationMeta]] = {}


@deploy("Host bootstrap")
def host_bootstrap(config: HostConfig, manager: ManagerName, npm: bool) -> None:
    """`npm`: whether the host had npm when the deploy began (deploy.py's plan facts)."""
    if config.common.bundle:
        # Air-gapped: the bundle is verified on the host before anything is installed, then serves every step.
        bundle.bootstrap_packages(config, install_steps.apt_packages(config, manager))
    else:
        packages = tuple(install_steps.apt_packages(config, manager))
        facts.expect(File, path=APT_UPDATE_FILENAME)
        facts.expect(Date)
        facts.expect(MissingDebs, packages=packages)
        system_packages(name="Install system packages (postgres, pgbackrest, node, supervisor, nftables)",
                        packages=packages)
    if not config.common.bundle and not npm:
        # Nodesource's nodejs ships npm; Debian's splits it out.
        apt.packages(name="Install npm", packages=["npm"], no_recommends=True)

    root = config.common.install_root
    # Each tenant's services read their own view of the host config: written here, before host.json becomes
    # root's, for every tenant whose user exists (selected by this run or not: an only_tenants deploy or an
    # upgrade must not leave a running tenant unable to read its config); a new tenant's in its substrate.
    *_, resolved = apply_desired(desired.bootstrap(config, tenants_with_users(config)))
    venv = facts.expected(FileContent, path=f"{root}/venv/pyvenv.cfg")
    server.shell(
        name="Create the appliance venv",
        commands=[bundle.venv_command(config) if config.common.bundle else install_steps.venv_command(config)],
        _if=lambda: not venv(),
    )
    if config.common.bundle:
        bundle.python_requirements(config)
    facts.expect(FileContent, path=str(install_steps.sources_marker(config)))
    sources = appliance_sources(name="Install the appliance package into its venv", config=config)
    DEPLOY_CHANGES[host.name] = [sources, resolved]
    for role in desired.node_programs(config):
        node_program(config, role)
    if manager == "supervisor":
        facts.expect(Supervisord)
        supervisord_running(name="Ensure supervisord is running")
