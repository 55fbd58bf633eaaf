"""The front door's certificates: its own CA (per host, made at the first deploy; key 0600 root), one
certificate per tenant for all its hostnames, renewed by the deploy within the renewal window, the operator's
files copied in for tenants with `tls: files`, and a default certificate that names no tenant.

The front door has a CA of its own, not the object store's: a tenant host that uses a vault's store holds only
that CA's public certificate, and clients that trust tenants' front doors need not trust the store's CA.

    >>> changes = ensure_frontdoor_tls(host)   # [] when everything is current
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import FrontdoorTls, HostConfig, TenantConfig
from appliance.objectstore.files import ensure_dir, owner_ids, write_atomic
from appliance.objectstore.tls import (
    ca_is_current,
    cert_names,
    ensure_ca,
    ensure_leaf_cert,
    leaf_is_current,
)

# The name on the certificate for clients that name no tenant of the host (.invalid is never a real name).
DEFAULT_NAME = "no-tenant.invalid"


class OperatorCertificateError(ValueError):
    """An operator-provided certificate that cannot be served; the message names the file and the problem."""


def operator_files_problem(tenant: TenantConfig) -> str | None:
    """Why the operator's certificate for `tenant` cannot be served, or None."""
    cert_file, key_file = Path(tenant.frontdoor.cert_file), Path(tenant.frontdoor.key_file)
    try:
        certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        return f"{cert_file}: not a readable PEM certificate ({exc.__class__.__name__})"
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"{key_file}: not a readable, unencrypted PEM private key ({exc.__class__.__name__})"
    leaf = certs[0]
    if leaf.public_key() != key.public_key():
        return f"{key_file} is not the key of {cert_file}"
    missing = [name for name in tenant.hostnames if name not in cert_names(leaf)]
    if missing:
        return f"{cert_file} does not name {missing} (tenant {tenant.id}'s hostnames)"
    if leaf.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return f"{cert_file} expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
    return None


def _copy_if_changed(source: Path, target: Path, mode: int, owner: tuple[int, int] | None) -> bool:
    data = source.read_bytes()
    try:
        if target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(target, data, mode, owner)
    return True


@dataclass(frozen=True)
class _Issued:
    """A certificate the front door CA issues (and renews) for `names`."""

    what: str
    cert: Path
    key: Path
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Copied:
    """The operator's certificate and key for a tenant on `tls: files`, copied in for the front door."""

    tenant: TenantConfig
    cert: Path
    key: Path


def _served(host: HostConfig) -> list[_Issued | _Copied]:
    """Every certificate the front door serves from files (ACME tenants' are Caddy's own), default first."""
    cert, key = host.frontdoor_default_cert
    served: list[_Issued | _Copied] = [_Issued("default certificate", cert, key, (DEFAULT_NAME,))]
    for tenant in host.tenants:
        cert, key = host.frontdoor_cert(tenant)
        if tenant.frontdoor.tls is FrontdoorTls.internal:
            served.append(_Issued(f"certificate of {tenant.id} ({', '.join(tenant.hostnames)})", cert, key,
                                  tenant.hostnames))
        elif tenant.frontdoor.tls is FrontdoorTls.files:
            served.append(_Copied(tenant, cert, key))
    return served


def _current(host: HostConfig, item: _Issued | _Copied) -> bool:
    if isinstance(item, _Issued):
        return leaf_is_current(ca_cert=host.frontdoor_ca_cert, cert_path=item.cert, key_path=item.key,
                               names=item.names)
    files = item.tenant.frontdoor
    try:
        same = (Path(files.cert_file).read_bytes() == item.cert.read_bytes()
                and Path(files.key_file).read_bytes() == item.key.read_bytes())
    except OSError:
        return False
    return same and operator_files_problem(item.tenant) is None


def _stale(host: HostConfig, served: list[_Issued | _Copied]) -> list[Path]:
    """Certificates and keys in the certs dir that nothing serves any more (a tenant gone, or now on ACME)."""
    wanted = {path.name for item in served for path in (item.cert, item.key)}
    return sorted(p for p in host.frontdoor_certs_dir.iterdir() if p.suffix in (".pem", ".key")
                  and p.name not in wanted)


def ensure_frontdoor_tls(host: HostConfig) -> list[str]:
    """The CA, the default certificate and every tenant's; a list of what changed (empty: nothing)."""
    changes: list[str] = []
    ensure_dir(host.frontdoor_conf_dir, 0o755)
    if ensure_ca(host.frontdoor_ca_cert, host.frontdoor_ca_key, common_name=f"appliance front door CA ({host.name})"):
        changes.append("front door CA created")
    owner = owner_ids(host.frontdoor_user)
    if ensure_dir(host.frontdoor_certs_dir, 0o700, owner):
        changes.append(f"{host.frontdoor_certs_dir} made the front door's")
    served = _served(host)
    for item in served:
        if isinstance(item, _Issued):
            if ensure_leaf_cert(ca_cert=host.frontdoor_ca_cert, ca_key=host.frontdoor_ca_key, cert_path=item.cert,
                                key_path=item.key, names=item.names, owner=host.frontdoor_user):
                changes.append(f"{item.what} issued")
            continue
        problem = operator_files_problem(item.tenant)
        if problem:
            raise OperatorCertificateError(f"tenant {item.tenant.id}: frontdoor.cert_file/key_file: {problem}")
        copied = _copy_if_changed(Path(item.tenant.frontdoor.key_file), item.key, 0o600, owner)
        copied |= _copy_if_changed(Path(item.tenant.frontdoor.cert_file), item.cert, 0o644, owner)
        if copied:
            changes.append(f"operator's certificate of {item.tenant.id} installed")
    for stale in _stale(host, served):
        stale.unlink()
        changes.append(f"{stale.name} removed (no such tenant on this host)")
    return changes


def frontdoor_tls_ok(host: HostConfig) -> bool:
    """Everything `ensure_frontdoor_tls` would leave as it is (the deploy's fact; writes nothing)."""
    if not ca_is_current(host.frontdoor_ca_cert, host.frontdoor_ca_key):
        return False
    served = _served(host)
    return all(_current(host, item) for item in served) and not _stale(host, served)


@dataclass(frozen=True)
class ServedCertificate:
    tenant: str
    names: tuple[str, ...]
    not_after: dt.datetime | None  # None: managed by Caddy (ACME) and not on our side


def served_certificates(host: HostConfig) -> list[ServedCertificate]:
    """What each tenant's certificate says (for `appliance status`)."""
    served = []
    for tenant in host.tenants:
        if tenant.frontdoor.tls is FrontdoorTls.acme:
            served.append(ServedCertificate(tenant.id, tenant.hostnames, None))
            continue
        try:
            cert = x509.load_pem_x509_certificate(host.frontdoor_cert(tenant)[0].read_bytes())
        except (OSError, ValueError):
            served.append(ServedCertificate(tenant.id, tenant.hostnames, None))
            continue
        served.append(ServedCertificate(tenant.id, tuple(sorted(cert_names(cert))), cert.not_valid_after_utc))
    return served
