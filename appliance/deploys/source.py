"""The appliance's own sources as the controller ships them to each host (a deterministic tarball)."""

from __future__ import annotations

import functools
import hashlib
import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What a host needs to install and run the package: code, roles (settings + templates), the lock.
SHIPPED = ("pyproject.toml", "README.md", "requirements.lock", "appliance", "roles")


def _files() -> list[Path]:
    files: list[Path] = []
    for entry in SHIPPED:
        path = REPO / entry
        if path.is_file():
            files.append(path)
        else:
            files.extend(
                p for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".egg-info"))
                and ".egg-info" not in str(p)
            )
    return sorted(files)


@functools.cache
def _tar() -> tuple[bytes, str]:
    """(tar bytes, sha256 hex). Fixed mtimes and owners make the hash depend on content only."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files():
            info = tarfile.TarInfo(str(path.relative_to(REPO)))
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue(), hashlib.sha256(raw.getvalue()).hexdigest()


def source_digest() -> str:
    """What a host's installed sources are compared with (the sha256 of the uncompressed tarball): every run needs
    it, only a run that ships the sources needs them compressed (0.15 s of a no-op redeploy)."""
    return _tar()[1]


@functools.cache
def tarball() -> tuple[bytes, str]:
    """(gzip tar bytes, sha256 hex of the uncompressed tar, as `source_digest`)."""
    import gzip

    raw, digest = _tar()
    return gzip.compress(raw, mtime=0), digest


def requirements_digest() -> str:
    return hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
