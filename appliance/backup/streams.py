"""The Durable Streams data of a tenant: a consistent online snapshot, and proofs that a restored copy is equal.

The server (npm @durable-streams/server, file-backed) keeps each stream's bytes in an append-only segment file
`streams/<directoryName>.log` (frames `[u32 length][payload][\\n]`) and its metadata (path, content type,
offset, producers) in LMDB `metadata.lmdb`. It fsyncs appended bytes before it moves the offset in LMDB, so a
snapshot is: LMDB's own consistent hot copy (streams_snapshot.mjs, run with the server's own lmdb library),
then each segment file copied up to the offset that copy records. Bytes appended after the copy are left out,
so every stream in the snapshot ends exactly where the copied metadata says it does.

Streams are append-only, so "equal to the source as of the snapshot" is checkable at any later time: the
restored segment must be byte-identical to the first `length` bytes of the source's segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from appliance.backup.errors import BackupError
from appliance.backup.pgbackrest import as_tenant, tenant_ids
from appliance.config import TenantConfig
from appliance.services import streams_dir

SNAPSHOT_SCRIPT = Path(__file__).with_name("streams_snapshot.mjs")
NODE = "/usr/bin/node"
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class StreamCopy:
    """One stream as a snapshot holds it."""

    path: str
    directory_name: str
    content_type: str | None
    offset: str  # the server's offset string, "<readSeq>_<byte offset>", zero padded
    length: int  # bytes of its own segment file in the snapshot
    sha256: str
    missing: bool = False  # the segment file was gone (stream deleted while the snapshot ran)

    @property
    def segment(self) -> str:
        return f"streams/{self.directory_name}.log"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamCopy:
        return cls(**data)


def _physical_length(meta: dict[str, Any]) -> int:
    """Bytes in the stream's own segment: a fork's offsets count from the offset it was forked at."""
    logical = int(str(meta["currentOffset"]).split("_")[1])
    fork = meta.get("forkOffset")
    return logical - int(str(fork).split("_")[1]) if fork else logical


def sha256_prefix(path: Path, length: int) -> str | None:
    """sha256 of the first `length` bytes of `path`; None if the file is shorter or missing."""
    digest = hashlib.sha256()
    remaining = length
    try:
        with path.open("rb") as fh:
            while remaining:
                block = fh.read(min(_READ_BLOCK, remaining))
                if not block:
                    return None
                digest.update(block)
                remaining -= len(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _copy_prefix(source: Path, dest: Path, length: int) -> str:
    digest = hashlib.sha256()
    remaining = length
    with source.open("rb") as src, dest.open("wb") as out:
        while remaining:
            block = src.read(min(_READ_BLOCK, remaining))
            if not block:
                raise BackupError(f"stream segment {source.name} is shorter than its recorded offset")
            out.write(block)
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def snapshot(tenant: TenantConfig, data_dir: Path, dest: Path) -> list[StreamCopy]:
    """Snapshot the streams data dir `data_dir` into `dest` (which the tenant's user can write)."""
    for path in (dest, dest / "streams"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # node (as the tenant's user) writes the LMDB copy here.
            os.chown(path, *tenant_ids(tenant))
    install = streams_dir(tenant)
    result = subprocess.run(
        [NODE, str(SNAPSHOT_SCRIPT), "--install", str(install), "--data", str(data_dir),
         "--out", str(dest / "metadata.lmdb")],
        capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=300, **as_tenant(tenant),
    )
    if result.returncode != 0:
        raise BackupError(f"streams snapshot of {tenant.id} failed: {result.stderr.strip()[-500:]}")
    (dest / "metadata.lmdb-lock").unlink(missing_ok=True)
    copies = []
    for meta in json.loads(result.stdout or "[]"):
        name = str(meta["directoryName"])
        if "/" in name or name.startswith("."):
            raise BackupError(f"streams metadata of {tenant.id} names an odd directory {name!r}")
        length = _physical_length(meta)
        source = data_dir / "streams" / f"{name}.log"
        target = dest / "streams" / f"{name}.log"
        try:
            digest = _copy_prefix(source, target, length)
            missing = False
        except FileNotFoundError:
            digest, missing = "", True
        copies.append(StreamCopy(str(meta["path"]), name, meta.get("contentType"), str(meta["currentOffset"]),
                                 length, digest, missing))
    return copies


@dataclass(frozen=True)
class StreamMismatch:
    path: str
    problem: str


def compare_files(copies: Iterable[StreamCopy], restored_dir: Path, source_dir: Path | None) -> list[StreamMismatch]:
    """Every restored segment byte-equal to the snapshot, and the snapshot equal to the source's prefix."""
    problems = []
    for copy in copies:
        if copy.missing:
            continue
        restored = restored_dir / copy.segment
        got = sha256_prefix(restored, copy.length)
        if got is None or restored.stat().st_size != copy.length:
            problems.append(StreamMismatch(copy.path, f"restored {copy.segment} is not {copy.length} bytes"))
        elif got != copy.sha256:
            problems.append(StreamMismatch(copy.path, f"restored {copy.segment} differs from the backup"))
        if source_dir is not None:
            source = sha256_prefix(source_dir / copy.segment, copy.length)
            if source is None:
                problems.append(StreamMismatch(copy.path, "the source no longer holds these bytes (stream deleted)"))
            elif source != copy.sha256:
                problems.append(StreamMismatch(copy.path, "the source's first bytes differ from the backup"))
    return problems


def unsaved_streams(copies: Iterable[StreamCopy], source_dir: Path) -> dict[str, int]:
    """Streams whose source has grown since the snapshot (bytes not in it) or is not in it at all: the part of
    the streams that a restore from this snapshot would not bring back."""
    known = {copy.segment: copy.length for copy in copies}
    behind: dict[str, int] = {}
    for segment in sorted((source_dir / "streams").glob("*.log")):
        relative = f"streams/{segment.name}"
        size = segment.stat().st_size
        if size > known.get(relative, 0):
            behind[relative] = size - known.get(relative, 0)
    return behind


def check_served(url: str, copies: Iterable[StreamCopy], *, timeout_s: float = 10.0) -> list[StreamMismatch]:
    """A server on the restored data (at `url`) serves every stream, to exactly the recorded offset."""
    problems = []
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        for copy in copies:
            if copy.missing:
                continue
            response = client.head(quote(copy.path))
            served = response.headers.get("Stream-Next-Offset")
            if response.status_code != 200:
                problems.append(StreamMismatch(copy.path, f"restored server answered HEAD with {response.status_code}"))
            elif served != copy.offset:
                problems.append(StreamMismatch(copy.path, f"restored server is at offset {served}, backup at "
                                                          f"{copy.offset}"))
    return problems
