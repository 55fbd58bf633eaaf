"""Taking a backup now: pgBackRest (full, differential or incremental), then the side bundle, then expiry.

    >>> result = take_backup(host, tenant, "full")
    >>> result.as_dict()["backup"]["label"]        # e.g. '20261122-031500F'
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.backup import bundle, generations, pgbackrest
from appliance.backup.errors import BackupError
from appliance.backup.stanza import MISSING_STANZA, status_of
from appliance.backup.target import BackupSet, backup_sets
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig
from appliance.objectstore.credentials import tenant_credentials

BackupKind = Literal["full", "diff", "incr"]


@dataclass
class BackupResult:
    tenant: str
    requested: str
    backup: BackupSet
    bundle: bundle.Descriptor
    backup_seconds: float
    bundle_seconds: float
    expired_backups: list[str] = field(default_factory=list)
    expired_bundles: list[str] = field(default_factory=list)
    # Earlier cipher generations deleted because the current one now holds the retention's full backups.
    retired_generations: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "requested": self.requested, "backup": self.backup.as_dict(),
            "bundle": self.bundle.as_dict(), "backup_seconds": round(self.backup_seconds, 2),
            "bundle_seconds": round(self.bundle_seconds, 2), "expired_backups": self.expired_backups,
            "expired_bundles": self.expired_bundles, "retired_generations": self.retired_generations,
        }

    def summary(self) -> str:
        b, d = self.backup, self.bundle
        lines = [
            f"backup {b.label} ({b.type}) of tenant {self.tenant} in {self.backup_seconds:.1f}s: database "
            f"{_size(b.size)}, {_size(b.repo_delta)} written to the repository (now {_size(b.repo_size)} for this "
            f"set), WAL {b.wal_start} .. {b.wal_stop}",
            f"side bundle {d.key} in {self.bundle_seconds:.1f}s: {d.files} files, {d.streams} streams "
            f"({_size(d.stream_bytes)}), {_size(d.size)} sealed, sha256 {d.sha256[:16]}...",
        ]
        if b.type != self.requested:
            lines.append(f"note: pgBackRest made a {b.type} backup (a {self.requested} needs a full one before it)")
        if self.expired_backups or self.expired_bundles:
            lines.append(f"expired: backups {self.expired_backups or '-'}, bundles {self.expired_bundles or '-'}")
        if self.retired_generations:
            lines.append(f"retired: cipher generations {self.retired_generations} (this one holds the retention's "
                         "full backups), their repositories and passphrases deleted")
        return "\n".join(lines)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def take_bundle(host: HostConfig, tenant: TenantConfig) -> bundle.Descriptor:
    """A side bundle alone, between backups: the database is covered by WAL archiving meanwhile, the streams and
    the agents' state only by bundles. It names the newest backup set it goes with."""
    sets = backup_sets(pgbackrest.info(tenant))
    return bundle.create(host, tenant, backup_label=sets[-1].label if sets else None)


def take_backup(host: HostConfig, tenant: TenantConfig, kind: BackupKind = "diff") -> BackupResult:
    info = pgbackrest.info(tenant)
    code, message = status_of(info)
    if code in MISSING_STANZA:
        raise BackupError(f"tenant {tenant.id} has no stanza yet ({message}): deploy, or `appliance backup setup`")
    before = {b.label for b in backup_sets(info)}
    started = time.monotonic()
    pgbackrest.run(tenant, "backup", f"--type={kind}")
    backup_seconds = time.monotonic() - started
    info = pgbackrest.info(tenant)
    sets = backup_sets(info)
    new = [b for b in sets if b.label not in before]
    if not new:
        raise BackupError(f"pgbackrest backup of {tenant.id} reported success but no new backup set is listed")
    made = new[-1]
    started = time.monotonic()
    descriptor = bundle.create(host, tenant, backup_label=made.label)
    bundle_seconds = time.monotonic() - started
    expired_backups = sorted(before - {b.label for b in sets})
    retired = generations.retire_obsolete(host, tenant, info)
    if generations.layout(tenant)[1:]:
        # Earlier cipher generations still kept: their backups still restore, so their bundles stay.
        sets = backup_sets(pgbackrest.info(tenant, every_generation=True))
    fulls = [b for b in sets if b.type == "full"]
    expired_bundles: list[str] = []
    if fulls:
        # Bundles older than the oldest retained full backup would only restore with it: they go with it.
        client = bundle.client_for(host, tenant_credentials(tenant, BACKUP_S3_KEYS))
        expired_bundles = bundle.expire(client, tenant, fulls[0].start)
    return BackupResult(tenant.id, kind, made, descriptor, backup_seconds, bundle_seconds, expired_backups,
                        expired_bundles, retired)
