"""The tenant's secrets for its side bundles, sealed by root with a key only root keeps (issue 20).

A bundle carries every secret of the tenant: restoring a tenant whose directory is lost needs them all. Bundles
are made by the backup, which runs as the tenant's user (the cluster's owner). Were that user to read every secret
to pack them, it would hold every component's keys (the JWT signing key, the secrets table's key, the audit
shipper's S3 pair, ...). Instead root seals them, as they are, into `backup/secrets.sealed` (the tenant's user
reads the file, and cannot open it) with a key of its own kept in the root-only recovery keys (`secrets_key`,
appliance.backup.stanza); the bundle carries that file, and a restore that must put secrets back opens it with
the recovery keys. Whether it is current, root tells by opening it (a few KiB).

Root refreshes it wherever it writes the recovery keys: every deploy, every rotation and every restore. Between a
change of a secret and the next of those, bundles carry the capsule of before (a restore of a lost tenant
directory would then bring back the secret of before, which the next rotation replaces).
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from pathlib import Path

from appliance.backup.errors import BackupError
from appliance.backup.sealed import Sealer, SealError, open_sealed
from appliance.config import TENANT_SECRETS, TenantConfig

# In the recovery keys: the key the capsule is sealed with.
KEY_FIELD = "secrets_key"
# The capsule's name inside a bundle.
IN_BUNDLE = "secrets.sealed"


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def capsule_file(tenant: TenantConfig) -> Path:
    return tenant.backup_dir / IN_BUNDLE


def _plain(tenant: TenantConfig) -> dict[str, str]:
    """The tenant's secrets as the capsule holds them."""
    return {name: tenant.read_secret(name) for name in TENANT_SECRETS if tenant.secret_path(name).is_file()}


def current(tenant: TenantConfig, key: str) -> bool:
    """The capsule holds the secrets as they are now (root: it reads them all)."""
    try:
        return open_capsule(capsule_file(tenant), key) == _plain(tenant)
    except (BackupError, OSError):
        return False


def ensure(tenant: TenantConfig, key: str) -> list[str]:
    """Seal the secrets anew when they changed; what changed. Root only (it reads every secret)."""
    from appliance.backup.pgbackrest import tenant_ids
    from appliance.objectstore.files import write_atomic

    if os.geteuid() != 0 or current(tenant, key):
        return []
    sealed = io.BytesIO()
    with Sealer(sealed, key) as out:  # type: ignore[arg-type]
        out.write(json.dumps(_plain(tenant), sort_keys=True).encode())
    # The backup (the tenant's user) puts it in bundles: it reads it, and cannot open it without the key.
    write_atomic(capsule_file(tenant), sealed.getvalue(), 0o600, tenant_ids(tenant))
    return [f"secrets capsule {capsule_file(tenant)}"]


def open_capsule(path: Path, key: str) -> dict[str, str]:
    """The secrets a capsule (from a bundle) holds; BackupError when the key does not open it."""
    try:
        with path.open("rb") as raw:
            data = json.loads(b"".join(open_sealed(raw, key)))
    except (SealError, OSError, ValueError):
        raise BackupError(f"the bundle's secrets ({path.name}) do not open with the recovery keys' secrets_key "
                          "(a recovery keys file older than the bundle?)") from None
    return {str(name): str(value) for name, value in data.items() if name in TENANT_SECRETS}
