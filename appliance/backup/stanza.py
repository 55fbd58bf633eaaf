"""The tenant's stanza: pgBackRest files, the repository in the tenant's backup bucket, and the recovery keys.

Host-side and idempotent; `ensure_stanza` returns what it changed ([] on a redeploy with nothing new).
It needs the tenant's Postgres running (stanza-create checks the cluster's system id) and the bucket reachable
with the backup's S3 keys (the object store step of the deploy).

    >>> ensure_stanza(host, tenant)
    ['dir /srv/appliance/tenants/acme/backup/spool', '.../pgbackrest.conf', ..., 'stanza acme created']
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.backup import capsule, generations, pgbackrest
from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig
from appliance.objectstore.files import ensure_dir, write_if_changed

# What opens a tenant's backups: the backup's S3 keys and its cipher passphrase (the bundle's key derives from it).
RECOVERY_SECRETS = (*BACKUP_S3_KEYS.files, "backup_cipher_passphrase")

# The recovery keys' fields for cipher generations (appliance.backup.generations).
_GENERATION = "cipher_generation"
_KEPT = "kept_cipher_passphrases"

# `pgbackrest info` status codes: a usable stanza (2: no backup in it yet), none yet, another cluster's.
STANZA_OK = frozenset({0, 2})
MISSING_STANZA = frozenset({1, 3})
_DATABASE_MISMATCH = 5


def status_of(info: dict[str, Any]) -> tuple[int, str]:
    """(code, message) of a `pgbackrest info` answer."""
    status = info.get("status") or {}
    return int(status.get("code", 99)), str(status.get("message", "unknown"))


def stanza_status(tenant: TenantConfig) -> tuple[int, str]:
    return status_of(pgbackrest.info(tenant))


def ensure_files(host: HostConfig, tenant: TenantConfig) -> list[str]:
    """The pgBackRest config and wrapper, and the recovery keys: all that archive_command needs to work. Run it
    before Postgres starts with archiving on (no server needed), so that no archive attempt finds no wrapper."""
    return pgbackrest.ensure_files(host, tenant) + ensure_recovery_keys(tenant)


def ensure_stanza(host: HostConfig, tenant: TenantConfig) -> list[str]:
    """Files, recovery keys, then the stanza itself (created once)."""
    changes = ensure_files(host, tenant)
    code, message = stanza_status(tenant)
    if code in MISSING_STANZA:
        pgbackrest.run(tenant, "stanza-create")
        changes.append(f"stanza {pgbackrest.stanza(tenant)} created in {tenant.backup_bucket}")
    elif code == _DATABASE_MISMATCH:
        # A cluster initdb'd anew (new system id) must not write into the old cluster's history silently.
        raise BackupError(
            f"the repository in {tenant.backup_bucket} belongs to another cluster than {tenant.pg_data} "
            f"({message}); restore that cluster, or move the old repository away before creating a new one"
        )
    return changes


def files_ok(host: HostConfig, tenant: TenantConfig) -> bool:
    """The pgBackRest config and wrapper are as they would be rendered now."""
    paths = backup_paths(tenant)
    try:
        return (paths.config.read_text() == pgbackrest.render_config(host, tenant)
                and paths.wrapper.read_text() == pgbackrest.render_wrapper(tenant))
    except OSError:
        return False


def stanza_ok(tenant: TenantConfig) -> bool:
    """Recovery keys and the secrets capsule current (checked as root only: only root can read them) and the
    stanza there."""
    try:
        if os.geteuid() == 0:
            keys = json.loads(backup_paths(tenant).recovery_keys_file.read_text())
            if any(keys.get(name) != value for name, value in recovery_keys(tenant).items()):
                return False
            if not capsule.current(tenant, keys[capsule.KEY_FIELD]):
                return False
        return stanza_status(tenant)[0] in STANZA_OK
    except (OSError, ValueError, BackupError):
        return False


def setup_ok(host: HostConfig, tenant: TenantConfig) -> bool:
    """Nothing for `ensure_stanza` to do (the deploy's fact, so that a redeploy with nothing changed runs nothing)."""
    return files_ok(host, tenant) and stanza_ok(tenant)


def _held(tenant: TenantConfig) -> dict[str, Any]:
    """The host's recovery keys as they are ({} when there are none yet)."""
    try:
        held: dict[str, Any] = json.loads(backup_paths(tenant).recovery_keys_file.read_text())
    except (OSError, ValueError):
        return {}
    return held


def held_secrets_key(tenant: TenantConfig) -> str | None:
    """The key of the tenant's secrets capsule from the host's recovery keys (root only; None without them)."""
    key = _held(tenant).get(capsule.KEY_FIELD)
    return str(key) if key else None


def recovery_keys(tenant: TenantConfig, secrets_key: str | None = None) -> dict[str, Any]:
    """The recovery keys' content: the secrets that open the backups, and after a cipher rotation the current
    generation's number and each kept earlier generation's passphrase (absent before any, so that a file
    written before rotations existed stays as it is); and the key of the secrets capsule, the one held, else
    `secrets_key` (an offline copy's, after a restore on a host that had none), else a new one."""
    keys: dict[str, Any] = {name: tenant.read_secret(name) for name in RECOVERY_SECRETS}
    # The key of the secrets capsule (appliance.backup.capsule): made once, kept ever after.
    keys[capsule.KEY_FIELD] = _held(tenant).get(capsule.KEY_FIELD) or secrets_key or capsule.new_key()
    layout = generations.layout(tenant)
    if layout[0].number != 1:
        keys[_GENERATION] = layout[0].number
    if layout[1:]:
        keys[_KEPT] = {str(g.number): generations.read_passphrase(tenant, g) for g in layout[1:]}
    return keys


@dataclass(frozen=True)
class RecoveryKeys:
    """Recovery keys as a restore uses them (repr hides the values)."""

    secrets: dict[str, str] = field(repr=False)
    generation: int = 1
    kept: dict[int, str] = field(default_factory=dict, repr=False)
    # Opens the bundles' secrets capsule; None in a file written before capsules (its bundles hold them plainly).
    secrets_key: str | None = field(default=None, repr=False)

    def __getitem__(self, name: str) -> str:
        return self.secrets[name]

    @property
    def passphrase(self) -> str:
        """The current generation's."""
        return self.secrets[generations.PASSPHRASE]


def ensure_recovery_keys(tenant: TenantConfig, *, secrets_key: str | None = None) -> list[str]:
    """Keep the root-only copy of the tenant's recovery keys current, and the secrets capsule sealed with its key
    (root only: the scheduler, running as the tenant, leaves them alone). Whoever changes a secret calls this."""
    if os.geteuid() != 0:
        return []
    path = backup_paths(tenant).recovery_keys_file
    ensure_dir(path.parent, 0o700, (0, 0))
    keys = recovery_keys(tenant, secrets_key)
    body = json.dumps({"tenant": tenant.id, "bucket": tenant.backup_bucket, **keys}, indent=2)
    changes = [f"recovery keys {path}"] if write_if_changed(path, (body + "\n").encode(), 0o600, (0, 0)) else []
    return changes + capsule.ensure(tenant, keys[capsule.KEY_FIELD])


def secrets_changed(tenant: TenantConfig) -> list[str]:
    """After a root command changed a secret: the recovery keys and the secrets capsule follow at once (the next
    deploy would too). A tenant whose backup is not set up yet has none to follow: nothing done."""
    try:
        return ensure_recovery_keys(tenant)
    except (OSError, BackupError):
        return []


def load_recovery_keys(tenant: TenantConfig, path: os.PathLike[str] | None = None) -> RecoveryKeys:
    """The recovery keys from `path` (an operator's offline copy) or the host's root-only copy."""
    source = backup_paths(tenant).recovery_keys_file if path is None else path
    try:
        data: dict[str, Any] = json.loads(Path(source).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"tenant {tenant.id}: its secrets are gone and there is no recovery keys file at {source}; pass the "
            "offline copy with --recovery-file"
        ) from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"recovery keys file {source} is unreadable: {type(exc).__name__}") from None
    if data.get("tenant") != tenant.id:
        raise BackupError(f"recovery keys file {source} is for tenant {data.get('tenant')!r}, not {tenant.id}")
    missing = [name for name in RECOVERY_SECRETS if not data.get(name)]
    if missing:
        raise BackupError(f"recovery keys file {source} lacks {missing}")
    try:
        generation = int(data.get(_GENERATION, 1))
        kept = {int(number): str(value) for number, value in (data.get(_KEPT) or {}).items()}
    except (TypeError, ValueError, AttributeError):
        raise BackupError(f"recovery keys file {source}: {_GENERATION} or {_KEPT} is malformed") from None
    key = data.get(capsule.KEY_FIELD)
    return RecoveryKeys({name: str(data[name]) for name in RECOVERY_SECRETS}, generation, kept,
                        str(key) if key else None)
