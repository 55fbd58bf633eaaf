"""Tenant secrets: generated on the host at first deploy, 0600 in the tenant's secrets dir, reused forever.

Nothing here prints or logs a secret value; callers get names, never contents.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import string
from pathlib import Path

from appliance.config import TENANT_SECRETS, SecretKind, TenantConfig


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


# The tenant root and its secrets dir: the agents' user (in the tenant's group) passes through to its own dir and
# token, nobody but the tenant's user lists them (appliance.host.users).
PASS_THROUGH_MODE = 0o710
AGENTS_TOKEN = "agents_internal_token"


def secret_access(tenant: TenantConfig, name: str, uid: int, gid: int) -> tuple[int, int, int]:
    """(mode, uid, gid) a secret file has: the tenant user's alone, but for the agents' internal token, which the
    agents' own user reads through its group (appliance.host.users) once that user exists."""
    if name == AGENTS_TOKEN:
        try:
            return 0o640, uid, pwd.getpwnam(tenant.agents_user).pw_gid
        except KeyError:
            pass
    return 0o600, uid, gid


def ensure_tenant_secrets(tenant: TenantConfig, uid: int, gid: int) -> list[str]:
    """Generate the secrets the tenant lacks; return their names (empty when nothing changed)."""
    tenant.secrets_dir.mkdir(mode=PASS_THROUGH_MODE, parents=True, exist_ok=True)
    os.chown(tenant.secrets_dir, uid, gid)
    os.chmod(tenant.secrets_dir, PASS_THROUGH_MODE)
    created = []
    for name in missing_secrets(tenant):
        mode, owner, group = secret_access(tenant, name, uid, gid)
        write_private(tenant.secret_path(name), generate(TENANT_SECRETS[name]), owner, group, mode)
        created.append(name)
    # Secrets that exist keep their value, but their modes are re-asserted every time.
    for name in TENANT_SECRETS:
        path = tenant.secret_path(name)
        st = path.stat()
        mode, owner, group = secret_access(tenant, name, uid, gid)
        if (st.st_mode & 0o777, st.st_uid, st.st_gid) != (mode, owner, group):
            os.chown(path, owner, group)
            os.chmod(path, mode)
    if created:
        fd = os.open(tenant.secrets_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return created
