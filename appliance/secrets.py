"""Tenant secrets: generated on the host at first deploy, in the tenant's secrets dir, reused forever; each file
readable by the components that use it and no other (SECRET_READERS).

Nothing here prints or logs a secret value; callers get names, never contents.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import string
from pathlib import Path

from appliance.config import S3_KEY_PAIRS, TENANT_SECRETS, SecretKind, TenantConfig


def generate(kind: SecretKind) -> str:
    if kind in (SecretKind.password, SecretKind.token):
        return secrets.token_urlsafe(32)
    if kind is SecretKind.key32:
        return base64.b64encode(secrets.token_bytes(32)).decode()
    if kind is SecretKind.s3_access_key:
        alphabet = string.ascii_uppercase + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(20))
    if kind is SecretKind.ed25519:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    if kind is SecretKind.jwks:
        from appliance.identity.keys import new_jwks

        return new_jwks()
    raise ValueError(f"unknown secret kind {kind}")


def write_private(path: Path, content: str, uid: int, gid: int, mode: int = 0o600) -> None:
    """Create `path` (0600 unless said) with `content` without a window where it is readable by others; never
    overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, content.encode() if content.endswith("\n") else (content + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def missing_secrets(tenant: TenantConfig) -> list[str]:
    return [name for name in TENANT_SECRETS if not tenant.secret_path(name).is_file()]


# The tenant root and its secrets dir: the components with a user of their own (in the tenant's group) pass through
# to their own dirs and secrets, nobody but the tenant's user lists them (appliance.host.users).
PASS_THROUGH_MODE = 0o710
AGENTS_TOKEN = "agents_internal_token"

# Which components open each secret's file (root reads any: the CLI, the deploy). A file is one reader's user's
# (0600), and a second reader's, if any, reads it through its own group (0640). The backup (the tenant's user, as
# Postgres is) reads its own and the database superuser's only: the bundles carry every secret sealed by root
# (appliance.backup.capsule), so it needs no other.
SECRET_READERS: dict[str, tuple[str, ...]] = {
    "db_superuser_password": ("postgres",),
    "db_gateway_password": ("gateway",),
    "db_sync_password": ("sync",),
    "db_audit_password": ("audit",),
    "db_identity_password": ("identity",),
    "sync_secret": ("gateway", "sync"),
    # The agents' user owns it and the gateway reads it through its group: the agents' group holds the tenant's
    # user too (it backs up the agents' files), which must not read it (secret_access).
    AGENTS_TOKEN: ("gateway", "agents"),
    "jwt_signing_key": ("gateway",),
    "secrets_encryption_key": ("gateway",),
    "backup_cipher_passphrase": ("backup",),
    # Each S3 pair is its one component's.
    **{name: (pair.component,) for pair in S3_KEY_PAIRS for name in pair.files},
    "identity_jwks": ("identity",),
    "identity_cookie_keys": ("identity",),
    "identity_gateway_client_secret": ("gateway", "identity"),
}
# Secrets no component uses any more, removed from hosts deployed before (the agents' role lost its login).
RETIRED_SECRETS = ("db_agents_password",)
assert set(SECRET_READERS) == set(TENANT_SECRETS) and all(1 <= len(r) <= 2 for r in SECRET_READERS.values())


def component_ids(tenant: TenantConfig, component: str) -> tuple[int, int]:
    """(uid, gid) of the user `component` runs as; the tenant's user while its own does not exist yet (a host
    deployed before the split, until its users step runs)."""
    try:
        account = pwd.getpwnam(tenant.os_user(component))
    except KeyError:
        account = pwd.getpwnam(tenant.user)
    return account.pw_uid, account.pw_gid


# The components whose dirs the backup reads through their groups (appliance.host.users.OWN_DIRS): the tenant's
# user is in their groups, so no secret is readable through those.
BACKED_UP_DIRS = ("agents", "streams")


def secret_access(tenant: TenantConfig, name: str) -> tuple[int, int, int]:
    """(mode, uid, gid) the secret file `name` has: 0600 its one reader's; for two readers 0640, one's user's and
    the other's own group. That group lets in the second reader alone: never the tenant's group (every component's
    user is in it, to pass through the tenant root) nor a group the tenant's user is in (BACKED_UP_DIRS), so a
    reader of that kind owns the file."""
    readers = list(dict.fromkeys(component_ids(tenant, component) for component in SECRET_READERS[name]))
    if len(readers) == 1:
        return 0o600, *readers[0]
    first, second = readers
    tenant_ids = component_ids(tenant, "postgres")
    with_tenant_user = {component_ids(tenant, component)[1] for component in BACKED_UP_DIRS} - {tenant_ids[1]}
    if second == tenant_ids or second[1] in with_tenant_user:
        first, second = second, first
    assert second != tenant_ids and second[1] not in with_tenant_user, f"{name}: no group fits its second reader"
    return 0o640, first[0], second[1]


def _access_wrong(tenant: TenantConfig) -> list[tuple[str, Path, tuple[int, int, int]]]:
    """The existing secret files (and the JWT's previous public keys, which follow its key) whose owners or mode
    are not what `secret_access` says, with what they should be."""
    from appliance.gateway.core.config import previous_keys_file

    files = [(name, tenant.secret_path(name), secret_access(tenant, name)) for name in TENANT_SECRETS]
    files.append(("jwt previous keys", previous_keys_file(tenant), secret_access(tenant, "jwt_signing_key")))
    # Earlier backup cipher generations' passphrases, kept for restores: the backup's alone, like the current one.
    from appliance.backup.generations import PASSPHRASE, layout

    files += [(g.secret, tenant.secrets_dir / g.secret, secret_access(tenant, PASSPHRASE)) for g in layout(tenant)[1:]]
    wrong = []
    for name, path, wanted in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if (st.st_mode & 0o777, st.st_uid, st.st_gid) != wanted:
            wrong.append((name, path, wanted))
    return wrong


def secret_access_ok(tenant: TenantConfig) -> bool:
    return not _access_wrong(tenant)


def assert_secret_access(tenant: TenantConfig) -> list[str]:
    """Give every secret file the owners and mode `secret_access` says; the names of those changed."""
    for _, path, (mode, uid, gid) in (wrong := _access_wrong(tenant)):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return [name for name, _, _ in wrong]


def seed_backup_pair(tenant: TenantConfig) -> list[str]:
    """On an external store (AWS, MinIO, Ceph), a tenant deployed before it had a backup pair of its own gets the
    audit shipper's keys as its backup pair: that identity is the only one the store knows for the tenant, and a
    random pair would stop WAL archiving until the operator made one. The operator then installs the backup's
    own identity (`appliance tenant s3-keys <id> --pair backup`); the returned line says so."""
    from appliance.config import AUDIT_S3_KEYS, BACKUP_S3_KEYS

    audit = [tenant.secret_path(name) for name in AUDIT_S3_KEYS.files]
    backup = [tenant.secret_path(name) for name in BACKUP_S3_KEYS.files]
    if any(path.exists() for path in backup) or not all(path.is_file() for path in audit):
        return []
    for source, target in zip(AUDIT_S3_KEYS.files, BACKUP_S3_KEYS.files, strict=True):
        mode, owner, group = secret_access(tenant, target)
        write_private(tenant.secret_path(target), tenant.read_secret(source), owner, group, mode)
    return [f"{', '.join(BACKUP_S3_KEYS.files)}: the audit shipper's keys, the only ones the external store knows "
            f"for {tenant.id}; give the backup an identity of its own on the store (its bucket only) and install it "
            f"with `appliance tenant s3-keys {tenant.id} --pair backup`"]


def ensure_tenant_secrets(tenant: TenantConfig, uid: int, gid: int, external_store: bool = False) -> list[str]:
    """Generate the secrets the tenant lacks; return their names (empty when nothing changed). `external_store`:
    the tenant's S3 keys are the operator's, made on the store (see `seed_backup_pair`)."""
    tenant.secrets_dir.mkdir(mode=PASS_THROUGH_MODE, parents=True, exist_ok=True)
    os.chown(tenant.secrets_dir, uid, gid)
    os.chmod(tenant.secrets_dir, PASS_THROUGH_MODE)
    created = seed_backup_pair(tenant) if external_store else []
    for name in missing_secrets(tenant):
        mode, owner, group = secret_access(tenant, name)
        write_private(tenant.secret_path(name), generate(TENANT_SECRETS[name]), owner, group, mode)
        created.append(name)
    # Secrets that exist keep their value, but their modes are re-asserted every time.
    assert_secret_access(tenant)
    if created:
        fd = os.open(tenant.secrets_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return created
