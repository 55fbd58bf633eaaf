"""The client secrets of a tenant's external issuers, on the host: the operator names a file
(`identity.issuers[].client_secret_file`, readable by root); the deploy copies it into the tenant's secrets dir
(0600, the tenant's user), where the gateway reads it. The secret never passes through the inventory or the
controller."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.config import ConfigError, IssuerSettings, TenantConfig
from appliance.secrets import component_ids, write_private

PREFIX = "issuer-"
SUFFIX = ".client_secret"


def issuer_secret_path(tenant: TenantConfig, issuer: IssuerSettings) -> Path:
    return tenant.secrets_dir / f"{PREFIX}{issuer.name}{SUFFIX}"


def _source(issuer: IssuerSettings) -> str:
    path = Path(issuer.client_secret_file)
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"identity.issuers[{issuer.name}].client_secret_file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"identity.issuers[{issuer.name}].client_secret_file {path} is empty")
    return value


def _stale(tenant: TenantConfig) -> list[Path]:
    wanted = {issuer_secret_path(tenant, i) for i in tenant.identity.issuers}
    return [p for p in tenant.secrets_dir.glob(f"{PREFIX}*{SUFFIX}") if p not in wanted]


def _current(tenant: TenantConfig, path: Path, value: str) -> bool:
    """The copy holds `value` and is the gateway's (a host deployed before the gateway had its own user: not)."""
    try:
        return path.read_text().strip() == value and path.stat().st_uid == component_ids(tenant, "gateway")[0]
    except FileNotFoundError:
        return False


def issuer_secrets_ok(tenant: TenantConfig) -> bool:
    """Every issuer's secret is in place and current, and no removed issuer's secret is left behind."""
    try:
        for issuer in tenant.identity.issuers:
            if not _current(tenant, issuer_secret_path(tenant, issuer), _source(issuer)):
                return False
    except (OSError, ConfigError):
        return False
    return not _stale(tenant)


def copy_issuer_secrets(tenant: TenantConfig) -> list[str]:
    """Bring the copies up to date; returns the issuers whose secret was written or removed."""
    # The gateway is their only reader.
    uid, gid = component_ids(tenant, "gateway")
    changed = []
    for issuer in tenant.identity.issuers:
        value = _source(issuer)
        path = issuer_secret_path(tenant, issuer)
        if _current(tenant, path, value):
            continue
        path.unlink(missing_ok=True)
        write_private(path, value, uid, gid)
        changed.append(issuer.name)
    for path in _stale(tenant):
        os.unlink(path)
        changed.append(path.name.removeprefix(PREFIX).removesuffix(SUFFIX))
    return changed
