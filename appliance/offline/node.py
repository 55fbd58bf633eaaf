"""The Node programs of a bundle: each program's node_modules, installed on the build machine from its role's
package.json and package-lock.json with the deploy's own npm command (`appliance.services.NPM_INSTALL`), packed
as `node/<role>.tar.gz`. A host unpacks it where `npm install` would have written (no npm, no registry there)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

from appliance.desired import NODE_PACKAGE_FILES, NODE_PROGRAMS
from appliance.offline.manifest import BundleError
from appliance.roles import role_file
from appliance.services import NPM_INSTALL


def package_files_digest(role: str) -> str:
    """sha256 over the role's package.json and package-lock.json: what its node_modules were installed from."""
    digest = hashlib.sha256()
    for name in NODE_PACKAGE_FILES:
        digest.update(name.encode() + b"\0" + role_file(role, name).read_bytes() + b"\0")
    return digest.hexdigest()


def node_modules_archive(role: str, cache: Path) -> Path:
    """`<cache>/<role>-<package files digest>.tar.gz`, built once per package-lock (a rebuild reuses it)."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{role}-{package_files_digest(role)[:16]}.tar.gz"
    if archive.exists():
        return archive
    work = cache / f"{role}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for name in NODE_PACKAGE_FILES:
        shutil.copy2(role_file(role, name), work / name)
    result = subprocess.run(NPM_INSTALL, shell=True, cwd=work, capture_output=True, text=True)
    main_package = NODE_PROGRAMS[role][2]
    if result.returncode != 0 or not (work / "node_modules" / main_package / "package.json").is_file():
        raise BundleError(f"npm install of {role} failed ({result.returncode}):\n{result.stderr.strip()[-3000:]}")
    partial = archive.with_suffix(".partial")
    _pack(work / "node_modules", partial)
    partial.rename(archive)
    shutil.rmtree(work)
    return archive


def _pack(node_modules: Path, archive: Path) -> None:
    """A deterministic tar.gz of node_modules (sorted, owner root, mtime 0; modes and symlinks as npm left them)."""
    with archive.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = [node_modules, *sorted(node_modules.rglob("*"))]
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(node_modules.parent)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
