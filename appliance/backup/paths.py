"""Where backup things live, derived from the tenant config in this one place.

Inside the tenant's root (0700, the tenant's user): the pgBackRest config and wrapper, the WAL spool, a work
dir for bundles, drill reports and scratch instances. Outside it, root-only: the recovery keys that let a
tenant whose directory is gone be restored (`recovery_keys_file`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import TenantConfig

# The repository's root inside the tenant's backup bucket; side bundles sit beside it under BUNDLE_PREFIX.
REPO_PATH = "/pgbackrest"
BUNDLE_PREFIX = "bundles/"


@dataclass(frozen=True)
class BackupPaths:
    tenant: TenantConfig

    @property
    def config(self) -> Path:
        return self.tenant.backup_dir / "pgbackrest.conf"

    @property
    def wrapper(self) -> Path:
        return self.tenant.backup_dir / "pgbackrest.sh"

    @property
    def generation_file(self) -> Path:
        """The current repository generation's number (appliance.backup.generations)."""
        return self.tenant.backup_dir / "cipher-generation"

    @property
    def spool(self) -> Path:
        return self.tenant.backup_dir / "spool"

    @property
    def work(self) -> Path:
        """Bundles are built and fetched here (same disk as the data, private to the tenant)."""
        return self.tenant.backup_dir / "work"

    @property
    def drills(self) -> Path:
        return self.tenant.backup_dir / "drills"

    @property
    def lock(self) -> Path:
        return self.tenant.run_dir / "pgbackrest"

    @property
    def logs(self) -> Path:
        return self.tenant.logs_dir

    @property
    def scratch_root(self) -> Path:
        return self.tenant.root / "scratch"

    @property
    def recovery_keys_file(self) -> Path:
        """Root-only copy of what opens the backups (S3 keys, cipher passphrase): with the tenant's directory
        gone, its secrets are only in the encrypted bundle, and this is what decrypts it. Copy it off the host:
        a host that is lost takes this file with it."""
        return self.tenant.common.config_dir / "backup-keys" / f"{self.tenant.id}.json"


def backup_paths(tenant: TenantConfig) -> BackupPaths:
    return BackupPaths(tenant)
