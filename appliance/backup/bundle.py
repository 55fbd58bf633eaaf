"""Side bundles: what a tenant needs besides its database, sealed and checksummed beside its pgBackRest repository.

A database backup without the tenant's secrets cannot be brought back to a working tenant (tokens signed with
a lost key no longer verify, encrypted columns no longer open), so each bundle holds:

- `secrets.sealed`: every secret of the tenant (TENANT_SECRETS), sealed by root with a key of the root-only recovery
  keys (appliance.backup.capsule: the backup, which builds bundles, may not read them all); bundles made before
  hold them plainly under `secrets/<name>`;
- `config/`: the resolved tenant config (`tenant.json`), the rendered pgbackrest.conf and wrapper, and the
  cluster's rendered postgresql.conf/pg_hba.conf (also in the database backup; kept here for inspection);
- `streams/`: a consistent snapshot of the Durable Streams data dir (see `appliance.backup.streams`);
- `agents/`: the agent workers' own persistent state (SQLite through its online backup API, other files as is);
- `MANIFEST.json`: sha256 and size of every file above, and each stream's offset.

The sync engine's state is not in it: shape logs are a cache of Postgres (rebuilt from a snapshot of the
restored database, with clients told to refetch), and its replication slot is not in a physical backup either.

On the bucket, under `bundles/`: `<stamp>.bundle` (a tar, sealed with a key derived from the tenant's backup
cipher passphrase, see `sealed`) and `<stamp>.json`, its plain descriptor: appliance and Postgres versions, the
pgBackRest backup it accompanies, size and sha256 of the sealed object. Opening a bundle checks the object's
sha256, every chunk's authentication tag, and every file's sha256 against the manifest.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from appliance import __version__
from appliance.backup import capsule, generations, streams
from appliance.backup.errors import BackupError
from appliance.backup.paths import BUNDLE_PREFIX, backup_paths
from appliance.backup.pgbackrest import tenant_ids
from appliance.backup.sealed import SealedReader, Sealer, SealError
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig
from appliance.objectstore.client import S3Client, put_object, s3_client
from appliance.objectstore.credentials import S3Credentials

FORMAT = 1
# gzip at level 1: stream transcripts are JSON and shrink several-fold at almost no CPU cost.
GZIP_LEVEL = 1


@dataclass(frozen=True)
class Descriptor:
    """The plain (unsealed) description of one bundle; no secret in it."""

    key: str
    created_at: dt.datetime
    size: int
    sha256: str
    appliance_version: str
    postgres_version: str
    backup_label: str | None
    streams: int
    stream_bytes: int
    files: int
    format: int = FORMAT
    # The cipher generation whose passphrase sealed it (appliance.backup.generations); 1 for bundles made before.
    generation: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def descriptor_key(self) -> str:
        return self.key.removesuffix(".bundle") + ".json"

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "object": self.key, "created_at": self.created_at.isoformat(),
            "size": self.size, "sha256": self.sha256, "cipher": "AES-256-GCM, 1 MiB chunks, HKDF-SHA256 key",
            "appliance_version": self.appliance_version, "postgres_version": self.postgres_version,
            "backup_label": self.backup_label, "streams": self.streams, "stream_bytes": self.stream_bytes,
            "files": self.files, "cipher_generation": self.generation, **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Descriptor:
        known = {"format", "object", "created_at", "size", "sha256", "cipher", "appliance_version",
                 "postgres_version", "backup_label", "streams", "stream_bytes", "files", "cipher_generation"}
        return cls(
            key=str(data["object"]), created_at=dt.datetime.fromisoformat(data["created_at"]),
            size=int(data["size"]), sha256=str(data["sha256"]), appliance_version=str(data["appliance_version"]),
            postgres_version=str(data["postgres_version"]), backup_label=data.get("backup_label"),
            streams=int(data.get("streams", 0)), stream_bytes=int(data.get("stream_bytes", 0)),
            files=int(data.get("files", 0)), format=int(data.get("format", FORMAT)),
            generation=int(data.get("cipher_generation", 1)), extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass
class _Hashing:
    """Wraps a writable file: counts and hashes what passes through."""

    target: Any
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        pass


@dataclass
class _HashingReader:
    """Wraps a readable file: hashes what is read from it."""

    source: Any
    digest: Any = field(default_factory=hashlib.sha256)

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _add_file(tar: tarfile.TarFile, source: Path, name: str, manifest: dict[str, Any]) -> None:
    info = tar.gettarinfo(str(source), arcname=name)
    # Owners are the restoring host's business (the tenant's uid may differ there); modes are kept private.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o600 if info.isfile() else 0o700
    with source.open("rb") as fh:
        # Hashed as tar reads it: one pass, and the hash is of exactly the bytes archived (a stream segment may
        # grow meanwhile; tar takes the size it saw, and so does the hash).
        reader = _HashingReader(fh)
        tar.addfile(info, reader)
    manifest["files"][name] = {"sha256": reader.digest.hexdigest(), "size": info.size}


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, manifest: dict[str, Any] | None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(dt.datetime.now(dt.UTC).timestamp())
    tar.addfile(info, io.BytesIO(data))
    if manifest is not None:
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _private_dir(tenant: TenantConfig, parent: Path, prefix: str) -> Path:
    """A fresh dir under the tenant's work dir that the tenant's user owns (node writes the LMDB copy there)."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if os.geteuid() == 0:
        os.chown(path, *tenant_ids(tenant))
    return path


def _postgres_version(tenant: TenantConfig) -> str:
    try:
        from appliance.pg import connect

        with connect(tenant, database="postgres", timeout=3) as conn:
            row = conn.execute("show server_version").fetchone()
        return str(row[0]) if row else str(tenant.postgres.version)
    except Exception:  # a stopped cluster still has a major version; the bundle is still worth making
        return str(tenant.postgres.version)


# Copies the agents' dir: SQLite databases (WAL mode, written while the workers run) through SQLite's online
# backup API, which reads one consistent snapshot; their -wal/-shm/-journal files are not copied (the snapshot
# already holds what they held); any other file as it is. Runs as the tenant's user, so that SQLite's shared
# memory files stay the tenant's.
_AGENTS_SNAPSHOT = r"""
import shutil, sqlite3, sys
from pathlib import Path
source, dest = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(source.rglob("*")):
    target = dest / path.relative_to(source)
    if path.is_dir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        continue
    if not path.is_file() or path.name.endswith(("-wal", "-shm", "-journal")):
        continue
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("rb") as fh:
        sqlite = fh.read(16) == b"SQLite format 3\0"
    if sqlite:
        src = sqlite3.connect(path, timeout=30)
        dst = sqlite3.connect(target)
        with dst:
            src.backup(dst)
        dst.close()
        src.close()
    else:
        shutil.copyfile(path, target)
"""
# The system interpreter: the tenant's user can always run it (a venv's may live where it cannot).
SYSTEM_PYTHON = "/usr/bin/python3"


def _snapshot_agents(tenant: TenantConfig, dest: Path) -> None:
    import subprocess

    from appliance.backup.pgbackrest import as_tenant

    dest.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(dest, *tenant_ids(tenant))
    result = subprocess.run(
        [SYSTEM_PYTHON, "-c", _AGENTS_SNAPSHOT, str(tenant.agents_data), str(dest)], capture_output=True, text=True,
        cwd="/", env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, timeout=600, **as_tenant(tenant),
    )
    if result.returncode != 0:
        raise BackupError(f"snapshot of the agents' state of {tenant.id} failed: {result.stderr.strip()[-400:]}")


def build(tenant: TenantConfig, passphrase: str, out: BinaryIO, *, backup_label: str | None = None,
          streams_source: Path | None = None) -> tuple[dict[str, Any], list[streams.StreamCopy]]:
    """Write a sealed bundle of the tenant to `out`; returns its manifest and the stream copies in it."""
    paths = backup_paths(tenant)
    staging = _private_dir(tenant, paths.work, "bundle-")
    manifest: dict[str, Any] = {
        "format": FORMAT, "tenant": tenant.id, "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "appliance_version": __version__, "postgres_version": _postgres_version(tenant),
        "backup_label": backup_label, "files": {}, "streams": [],
    }
    try:
        copies = streams.snapshot(tenant, streams_source or tenant.streams_data, staging / "streams")
        manifest["streams"] = [copy.as_dict() for copy in copies]
        with (
            Sealer(out, passphrase) as sealer,
            gzip.GzipFile(fileobj=sealer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as packed,  # type: ignore[arg-type]
            tarfile.open(fileobj=packed, mode="w|") as tar,
        ):
            # The secrets as root sealed them, never read here: the backup may not read them all (capsule).
            if capsule.capsule_file(tenant).is_file():
                _add_file(tar, capsule.capsule_file(tenant), capsule.IN_BUNDLE, manifest)
            _add_bytes(tar, "config/tenant.json", tenant.to_json().encode(), manifest)
            for source, name in ((paths.config, "pgbackrest.conf"), (paths.wrapper, "pgbackrest.sh"),
                                 (tenant.pg_data / "postgresql.conf", "postgresql.conf"),
                                 (tenant.pg_data / "pg_hba.conf", "pg_hba.conf")):
                if source.is_file():
                    _add_file(tar, source, f"config/{name}", manifest)
            snapshot = staging / "streams"
            for path in sorted(p for p in snapshot.rglob("*") if p.is_file()):
                _add_file(tar, path, f"streams/{path.relative_to(snapshot)}", manifest)
            agents = staging / "agents"
            if tenant.agents_data.is_dir():
                _snapshot_agents(tenant, agents)
                for path in sorted(p for p in agents.rglob("*") if p.is_file()):
                    _add_file(tar, path, f"agents/{path.relative_to(agents)}", manifest)
            _add_bytes(tar, "MANIFEST.json", json.dumps(manifest, indent=1).encode(), None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest, copies


def client_for(host: HostConfig, creds: S3Credentials) -> S3Client:
    # Bundles can be large: generous timeouts, a few retries.
    return s3_client(host, creds, timeout_s=60.0, retries=3)


def create(host: HostConfig, tenant: TenantConfig, *, backup_label: str | None = None,
           creds: S3Credentials | None = None) -> Descriptor:
    """Build a bundle of the tenant now and upload it with its descriptor; returns the descriptor."""
    from appliance.objectstore.credentials import tenant_credentials

    client = client_for(host, creds or tenant_credentials(tenant, BACKUP_S3_KEYS))
    paths = backup_paths(tenant)
    created_at = dt.datetime.now(dt.UTC)
    key = f"{BUNDLE_PREFIX}{_stamp(created_at)}.bundle"
    work = _private_dir(tenant, paths.work, "upload-")
    try:
        sealed = work / "bundle.sealed"
        generation, passphrase = generations.current(tenant), tenant.read_secret(generations.PASSPHRASE)
        with sealed.open("wb") as raw:
            hashing = _Hashing(raw)
            manifest, copies = build(tenant, passphrase, hashing, backup_label=backup_label)  # type: ignore[arg-type]
        if (generations.current(tenant), tenant.read_secret(generations.PASSPHRASE)) != (generation, passphrase):
            # A cipher rotation ran meanwhile: the label could name another generation than the one that sealed it.
            raise BackupError(f"the backup cipher of {tenant.id} was rotated while bundle {key} was made; not "
                              "uploaded (the next backup makes one)")
        descriptor = Descriptor(
            key=key, created_at=created_at, size=hashing.size, sha256=hashing.digest.hexdigest(),
            appliance_version=__version__, postgres_version=manifest["postgres_version"],
            backup_label=backup_label, streams=len(copies), stream_bytes=sum(c.length for c in copies),
            files=len(manifest["files"]), generation=generation,
        )
        metadata = {"appliance-version": __version__, "postgres-version": descriptor.postgres_version,
                    "sha256": descriptor.sha256, "format": str(FORMAT)}
        try:
            client.upload_file(str(sealed), tenant.backup_bucket, key, ExtraArgs={"Metadata": metadata})
            put_object(client, tenant.backup_bucket, descriptor.descriptor_key,
                       (json.dumps(descriptor.as_dict(), indent=2) + "\n").encode(),
                       ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(f"uploading bundle {key} to {tenant.backup_bucket} failed: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return descriptor


@dataclass(frozen=True)
class BundleRef:
    """A bundle as its name gives it (the creation time is in the key): listing needs no object reads."""

    key: str
    created_at: dt.datetime

    @property
    def descriptor_key(self) -> str:
        return self.key.removesuffix(".bundle") + ".json"


def _created_at(key: str) -> dt.datetime | None:
    stamp = key.removeprefix(BUNDLE_PREFIX).removesuffix(".bundle")
    try:
        return dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def list_bundles(client: S3Client, tenant: TenantConfig) -> list[BundleRef]:
    """Every bundle in the bucket, oldest first."""
    refs = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=tenant.backup_bucket, Prefix=BUNDLE_PREFIX)
        for page in pages:
            for obj in page.get("Contents", []):
                created = _created_at(obj["Key"]) if obj["Key"].endswith(".bundle") else None
                if created is not None:
                    refs.append(BundleRef(obj["Key"], created))
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(f"listing bundles in {tenant.backup_bucket} failed: {exc}") from None
    return sorted(refs, key=lambda r: r.created_at)


def describe(client: S3Client, tenant: TenantConfig, ref: BundleRef) -> Descriptor:
    """A bundle's plain descriptor (sha256, size, versions)."""
    try:
        body = client.get_object(Bucket=tenant.backup_bucket, Key=ref.descriptor_key)["Body"].read()
        return Descriptor.from_dict(json.loads(body))
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(f"bundle descriptor {ref.descriptor_key} in {tenant.backup_bucket}: {exc}") from None
    except (ValueError, KeyError, TypeError):
        raise BackupError(f"bundle descriptor {ref.descriptor_key} in {tenant.backup_bucket} is unreadable") from None


def choose(refs: list[BundleRef], at: dt.datetime | None) -> BundleRef:
    """The bundle to restore with: the newest one, or for a point in time the newest made at or before it
    (else the oldest one after it: secrets rarely change, and streams only grow)."""
    if not refs:
        raise BackupError("there is no side bundle (secrets, streams) in the bucket: run `appliance backup` first")
    if at is None:
        return refs[-1]
    before = [r for r in refs if r.created_at <= at]
    return before[-1] if before else refs[0]


def pick(client: S3Client, tenant: TenantConfig, at: dt.datetime | None) -> Descriptor:
    return describe(client, tenant, choose(list_bundles(client, tenant), at))


@contextmanager
def fetched(host: HostConfig, tenant: TenantConfig, creds: S3Credentials, descriptor: Descriptor,
            passphrase: str) -> Iterator[Path]:
    """Download, verify and unpack a bundle into a private temporary dir (removed afterwards)."""
    client = client_for(host, creds)
    parent = backup_paths(tenant).work if tenant.backup_dir.is_dir() else Path(tempfile.gettempdir())
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="restore-bundle-", dir=parent))
    try:
        sealed = work / "bundle.sealed"
        try:
            client.download_file(tenant.backup_bucket, descriptor.key, str(sealed))
        except (BotoCoreError, ClientError) as exc:
            raise BackupError(
                f"downloading bundle {descriptor.key} from {tenant.backup_bucket} failed: {exc}"
            ) from None
        if _file_sha256(sealed) != descriptor.sha256 or sealed.stat().st_size != descriptor.size:
            raise BackupError(
                f"bundle object {descriptor.key} in {tenant.backup_bucket} does not match its recorded sha256/size "
                "(corrupted or altered)"
            )
        unpacked = work / "bundle"
        unpacked.mkdir(mode=0o700)
        try:
            with (
                sealed.open("rb") as raw,
                gzip.GzipFile(fileobj=SealedReader(raw, passphrase), mode="rb") as packed,  # type: ignore[call-overload]
                tarfile.open(fileobj=packed, mode="r|") as tar,
            ):
                extract_safely(tar, unpacked)
        except SealError as exc:
            raise BackupError(f"bundle object {descriptor.key} does not open: {exc}") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"bundle object {descriptor.key} is not a readable archive: {exc}") from None
        verify_manifest(unpacked, descriptor.key)
        yield unpacked
    finally:
        shutil.rmtree(work, ignore_errors=True)


def extract_safely(tar: tarfile.TarFile, target: Path) -> None:
    """Regular files and directories, under `target` only (all a bundle holds): the `data` filter where this
    Python has it (3.11.4 and later), the same rules by hand where it has not (Debian 12's python3.11, which
    every host venv is made with, is 3.11.2)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    extract_checked(tar, target)


def extract_checked(tar: tarfile.TarFile, target: Path) -> None:
    """Each member, in archive order (a stream cannot be read twice): refused unless it is a regular file or a
    directory whose path stays under `target`; extracted without its recorded owner or mode bits beyond 0755."""
    root = target.resolve()
    for member in tar:
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing archive member {member.name!r} (only plain files and directories "
                                   "inside the bundle)")
        if not (root / name).resolve().is_relative_to(root):
            raise tarfile.TarError(f"refusing archive member {member.name!r} (outside the bundle)")
        member.mode &= 0o755
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        tar.extract(member, root, set_attrs=False)
        if member.isfile():
            (root / name).chmod(member.mode | 0o600)


def manifest_of(unpacked: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((unpacked / "MANIFEST.json").read_text())
    return data


def verify_manifest(unpacked: Path, key: str) -> None:
    """Every file listed is there with its sha256 and size, and nothing unlisted is."""
    try:
        manifest = manifest_of(unpacked)
    except (OSError, ValueError):
        raise BackupError(f"bundle object {key} has no readable MANIFEST.json") from None
    listed = manifest.get("files", {})
    present = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()} - {"MANIFEST.json"}
    extra = sorted(present - set(listed))
    if extra:
        raise BackupError(f"bundle object {key} holds files its manifest does not list: {extra[:5]}")
    for name, entry in listed.items():
        path = unpacked / name
        if not path.is_file() or path.stat().st_size != entry["size"] or _file_sha256(path) != entry["sha256"]:
            raise BackupError(f"bundle object {key}: file {name} does not match its manifest checksum")


def stream_copies(unpacked: Path) -> list[streams.StreamCopy]:
    return [streams.StreamCopy.from_dict(item) for item in manifest_of(unpacked).get("streams", [])]


def expire(client: S3Client, tenant: TenantConfig, keep_after: dt.datetime, *,
           now: dt.datetime | None = None, recent: dt.timedelta = dt.timedelta(hours=48)) -> list[str]:
    """Delete bundles no restore would pick: every one made before `keep_after` (the oldest retained full
    backup's start), and of older than `recent` only the newest of each day is kept. The newest bundle always
    stays. The bucket is versioned: this adds delete markers, as pgBackRest's own expiry does."""
    now = now or dt.datetime.now(dt.UTC)
    refs = list_bundles(client, tenant)
    newest_of_day: dict[dt.date, BundleRef] = {}
    for ref in refs:
        newest_of_day[ref.created_at.date()] = ref
    doomed = [
        ref for ref in refs[:-1]
        if ref.created_at < keep_after
        or (now - ref.created_at > recent and newest_of_day[ref.created_at.date()] is not ref)
    ]
    for ref in doomed:
        for key in (ref.key, ref.descriptor_key):
            try:
                client.delete_object(Bucket=tenant.backup_bucket, Key=key)
            except (BotoCoreError, ClientError) as exc:
                raise BackupError(f"expiring bundle {key} failed: {exc}") from None
    return [ref.key for ref in doomed]
