"""The Debian packages of a bundle: what the bootstrap installs and its dependency closure against a stock
Debian 12, as a flat local apt repository (`debs/*.deb` and `debs/Packages`).

The rule for "stock Debian 12": every package of Priority required or important and what those depend on — what
`debootstrap bookworm` installs, the least any Debian 12 host has. apt itself decides the closure: the build
runs apt with private lists (the build machine's sources, freshly fetched) and a made-up dpkg status in which
exactly that base is installed, and asks it what `apt-get install --no-install-recommends <packages>` would
install there. Those .debs, at those versions, are what the bundle carries. A host further behind its point
release than the mirror the bundle was built from may lack a newer base library a package asks for: apt names
it on the host, and a bundle built from that host's snapshot fixes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from appliance.offline.manifest import BundleError

BASE_PRIORITIES = ("required", "important")
ARCHITECTURES = ("amd64", "all")
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)", re.M)


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    architecture: str
    sha256: str
    size: int
    record: str  # its stanza in the mirror's Packages index

    @property
    def file_name(self) -> str:
        # apt-get download's name for it (an epoch's colon is %3a).
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"

    def index_record(self) -> str:
        """Its stanza for the bundle's own Packages index: the mirror's, with the file beside the index."""
        lines = [line for line in self.record.splitlines() if not line.startswith("Filename:")]
        lines.insert(1, f"Filename: ./{self.file_name}")
        return "\n".join(lines) + "\n"


class PrivateApt:
    """apt with its own lists, cache and dpkg status under `root`: nothing of the build machine's apt state is read
    or changed, except its sources (where to fetch from)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.status = root / "state" / "status"
        for sub in ("state", "lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.status.touch()

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::State={self.root / 'state'}", "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::State::status={self.status}", "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "Debug::NoLocking=1", "-o", "Acquire::Languages=none", "-o", "APT::Architectures::=amd64",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        result = subprocess.run([tool, *self.options(), *args], capture_output=True, text=True, cwd=cwd, env=env)
        if result.returncode != 0:
            raise BundleError(f"{tool} {' '.join(args[:3])} failed ({result.returncode}):\n"
                              f"{(result.stderr or result.stdout).strip()[-3000:]}")
        return result.stdout

    def would_install(self, packages: list[str]) -> list[tuple[str, str, str]]:
        """(package, version, architecture) apt would install for `packages` on the current status."""
        out = self.run("apt-get", "-s", "-q", "install", "--no-install-recommends", *packages)
        return _INST.findall(out)


def _records(avail: str) -> dict[str, str]:
    records = {}
    for stanza in avail.split("\n\n"):
        match = re.search(r"^Package: (\S+)$", stanza, re.M)
        arch = re.search(r"^Architecture: (\S+)$", stanza, re.M)
        if match and arch and arch.group(1) in ARCHITECTURES:
            records[match.group(1)] = stanza.strip("\n")
    return records


def _field(record: str, name: str) -> str:
    match = re.search(rf"^{name}: (.*)$", record, re.M)
    return match.group(1).strip() if match else ""


def resolve(packages: list[str], cache: Path) -> list[Deb]:
    """The .debs a stock Debian 12 host needs to install `packages` (see the module's docstring for the rule)."""
    apt = PrivateApt(cache / "apt")
    apt.status.write_text("")
    apt.run("apt-get", "-q", "update")
    records = _records(apt.run("apt-cache", "dumpavail"))
    base_names = [name for name, rec in records.items() if _field(rec, "Priority") in BASE_PRIORITIES]
    base = {name for name, _, _ in apt.would_install(base_names)}
    apt.status.write_text("".join(
        f"Package: {name}\nStatus: install ok installed\n"
        + "\n".join(line for line in records[name].splitlines() if not line.startswith("Package:")) + "\n\n"
        for name in sorted(base)
    ))
    debs = []
    for name, version, arch in apt.would_install(packages):
        record = records.get(name, "")
        if _field(record, "Version") != version:
            raise BundleError(f"apt chose {name} {version}, not the mirror's candidate {_field(record, 'Version')}")
        debs.append(Deb(name, version, arch, _field(record, "SHA256"), int(_field(record, "Size") or 0), record))
    return debs


def download(debs: list[Deb], cache: Path) -> list[Path]:
    """Each .deb in `<cache>/debs` (fetched by apt when not there already), checked against the mirror's SHA-256."""
    apt = PrivateApt(cache / "apt")
    pool = cache / "debs"
    pool.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not _matches(pool / d.file_name, d.sha256)]
    if missing:
        apt.run("apt-get", "-q", "download", *(f"{d.package}={d.version}" for d in missing), cwd=pool)
    paths = []
    for deb in debs:
        path = pool / deb.file_name
        if not _matches(path, deb.sha256):
            raise BundleError(f"{path} does not match the SHA-256 of {deb.package} {deb.version} in the mirror's index")
        paths.append(path)
    return paths


def packages_index(debs: list[Deb]) -> bytes:
    """`debs/Packages`: a flat repository index of exactly these .debs (`deb [trusted=yes] file:<dir> ./`)."""
    return "\n".join(deb.index_record() for deb in sorted(debs, key=lambda d: d.package)).encode()


def _matches(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256
