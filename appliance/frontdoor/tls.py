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


def _names(tenant: TenantConfig) -> list[str]:
    return list(tenant.hostnames)


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
    missing = [name for name in _names(tenant) if name not in cert_names(leaf)]
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


def ensure_frontdoor_tls(host: HostConfig) -> list[str]:
    """The CA, the default certificate and every tenant's; a list of what changed (empty: nothing)."""
    changes: list[str] = []
    ensure_dir(host.frontdoor_conf_dir, 0o755)
    if ensure_ca(host.frontdoor_ca_cert, host.frontdoor_ca_key, common_name=f"appliance front door CA ({host.name})"):
        changes.append("front door CA created")
    owner = owner_ids(host.frontdoor_user)
    certs_dir = host.frontdoor_default_cert[0].parent
    if ensure_dir(certs_dir, 0o700, owner):
        changes.append(f"{certs_dir} made the front door's")
    cert, key = host.frontdoor_default_cert
    if ensure_leaf_cert(ca_cert=host.frontdoor_ca_cert, ca_key=host.frontdoor_ca_key, cert_path=cert, key_path=key,
                        names=[DEFAULT_NAME], owner=host.frontdoor_user):
        changes.append("default certificate issued")
    for tenant in host.tenants:
        cert, key = host.frontdoor_cert(tenant)
        if tenant.frontdoor.tls is FrontdoorTls.internal:
            if ensure_leaf_cert(ca_cert=host.frontdoor_ca_cert, ca_key=host.frontdoor_ca_key, cert_path=cert,
                                key_path=key, names=_names(tenant), owner=host.frontdoor_user):
                changes.append(f"certificate of {tenant.id} issued ({', '.join(tenant.hostnames)})")
        elif tenant.frontdoor.tls is FrontdoorTls.files:
            problem = operator_files_problem(tenant)
            if problem:
                raise OperatorCertificateError(f"tenant {tenant.id}: frontdoor.cert_file/key_file: {problem}")
            copied = _copy_if_changed(Path(tenant.frontdoor.key_file), key, 0o600, owner)
            copied |= _copy_if_changed(Path(tenant.frontdoor.cert_file), cert, 0o644, owner)
            if copied:
                changes.append(f"operator's certificate of {tenant.id} installed")
    known = {p.name for t in host.tenants for p in host.frontdoor_cert(t)} | {
        p.name for p in host.frontdoor_default_cert}
    for stale in sorted(certs_dir.iterdir()):
        if stale.name not in known and stale.suffix in (".pem", ".key"):
            stale.unlink()
            changes.append(f"{stale.name} removed (no such tenant on this host)")
    return changes


def frontdoor_tls_ok(host: HostConfig) -> bool:
    """Everything `ensure_frontdoor_tls` would leave as it is (the deploy's fact; writes nothing)."""
    if not ca_is_current(host.frontdoor_ca_cert, host.frontdoor_ca_key):
        return False
    cert, key = host.frontdoor_default_cert
    if not leaf_is_current(ca_cert=host.frontdoor_ca_cert, cert_path=cert, key_path=key, names=[DEFAULT_NAME]):
        return False
    certs_dir = cert.parent
    expected = {p.name for p in host.frontdoor_default_cert}
    for tenant in host.tenants:
        cert, key = host.frontdoor_cert(tenant)
        if tenant.frontdoor.tls is FrontdoorTls.internal:
            expected |= {cert.name, key.name}
            if not leaf_is_current(ca_cert=host.frontdoor_ca_cert, cert_path=cert, key_path=key,
                                   names=_names(tenant)):
                return False
        elif tenant.frontdoor.tls is FrontdoorTls.files:
            expected |= {cert.name, key.name}
            try:
                same = (Path(tenant.frontdoor.cert_file).read_bytes() == cert.read_bytes()
                        and Path(tenant.frontdoor.key_file).read_bytes() == key.read_bytes())
            except OSError:
                return False
            if not same or operator_files_problem(tenant):
                return False
    present = {p.name for p in certs_dir.iterdir() if p.suffix in (".pem", ".key")}
    return present == expected


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
