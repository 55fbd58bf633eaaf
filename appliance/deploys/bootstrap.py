"""Host bootstrap, once per host: packages, the appliance's venv and sources, the streams server, supervisord."""

from __future__ import annotations

import io
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Which
from pyinfra.operations import apt, files, server

from appliance import desired, install_steps
from appliance.config import HostConfig
from appliance.deploys import bundle
from appliance.deploys.facts import FileContent, Supervisord, tenants_with_users
from appliance.deploys.managed import apply_desired
from appliance.deploys.source import requirements_digest, tarball
from appliance.supervision import ManagerName


@operation()
def appliance_sources(config: HostConfig):
    """Ship the appliance's sources to <install_root>/src and install them into its venv, when they changed."""
    data, digest = tarball()
    if host.get_fact(FileContent, path=str(install_steps.sources_marker(config))) == digest:
        host.noop("appliance sources are current")
        return
    yield from files.put._inner(src=io.BytesIO(data), dest=str(install_steps.sources_upload(config)), mode="600")
    yield from install_steps.sources_commands(config, digest, requirements_digest())


@operation()
def supervisord_running():
    """Start supervisord when it is not running (hosts where systemd is not PID 1)."""
    state = host.get_fact(Supervisord)
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
    server.shell(
        name=f"Install the {what} (pinned by package.json and package-lock.json)",
        commands=[install_steps.npm_install_command(target)],
        _if=lambda: any(op.did_change() for op in changes)
        or not host.get_fact(FileContent, path=f"{target}/node_modules/{main_package}/package.json"),
    )


# Per host: the operations whose change means this deploy changed what the host runs (new sources or new
# resolved config); each tenant's trail records such a deploy as an operator action.
DEPLOY_CHANGES: dict[str, list[OperationMeta]] = {}


@deploy("Host bootstrap")
def host_bootstrap(config: HostConfig, manager: ManagerName) -> None:
    if config.common.bundle:
        # Air-gapped: the bundle is verified on the host before anything is installed, then serves every step.
        bundle.bootstrap_packages(config, install_steps.apt_packages(config, manager))
    else:
        apt.packages(
            name="Install system packages (postgres, pgbackrest, node, supervisor, nftables)",
            packages=install_steps.apt_packages(config, manager),
            update=True,
            cache_time=24 * 3600,
            no_recommends=True,
        )
    if not config.common.bundle and not host.get_fact(Which, command="npm"):
        # Nodesource's nodejs ships npm; Debian's splits it out.
        apt.packages(name="Install npm", packages=["npm"], no_recommends=True)

    root = config.common.install_root
    # Each tenant's services read their own view of the host config: written here, before host.json becomes
    # root's, for every tenant whose user exists (selected by this run or not: an only_tenants deploy or an
    # upgrade must not leave a running tenant unable to read its config); a new tenant's in its substrate.
    *_, resolved = apply_desired(desired.bootstrap(config, tenants_with_users(config)))
    server.shell(
        name="Create the appliance venv",
        commands=[bundle.venv_command(config) if config.common.bundle else install_steps.venv_command(config)],
        _if=lambda: not host.get_fact(FileContent, path=f"{root}/venv/pyvenv.cfg"),
    )
    if config.common.bundle:
        bundle.python_requirements(config)
    sources = appliance_sources(name="Install the appliance package into its venv", config=config)
    DEPLOY_CHANGES[host.name] = [sources, resolved]
    for role in desired.node_programs(config):
        node_program(config, role)
    if manager == "supervisor":
        supervisord_running(name="Ensure supervisord is running")
