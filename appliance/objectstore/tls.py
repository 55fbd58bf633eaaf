"""The host CA and the embedded store's certificates.

S3 is served over HTTPS only (pgBackRest speaks nothing else, and tenant keys must not cross loopback in the
clear), so every host that runs the store has its own small CA: `HostConfig.ca_cert` is public and is what
boto3 (`verify=`) and pgBackRest (`repo1-storage-ca-file`) trust; `HostConfig.ca_key` never leaves the host.

Everything here is idempotent: a file that exists and is still valid is never rewritten, so a redeploy changes
nothing and restarts nothing. A server certificate is re-issued (with the same key) when it lacks a required
name, is no longer signed by the current CA, or expires within `RENEW_BEFORE`.

    >>> changed = ensure_store_tls(host, extra_names=["vault.lan"], owner="appliance-objectstore")
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import HostConfig
from appliance.objectstore.files import ensure_dir, fix_mode, owner_ids, write_atomic
from appliance.objectstore.paths import store_paths

# Names every store certificate carries: clients on the store's own host reach it by either.
BASE_NAMES = ("127.0.0.1", "localhost")
CA_VALIDITY = dt.timedelta(days=3650)
# Short enough that renewal is routine (and exercised), long enough that a host redeployed yearly never lapses.
LEAF_VALIDITY = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
# Allow for hosts whose clocks lag the one that issued the certificate.
BACKDATE = dt.timedelta(minutes=5)

Key = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> Key:
    # P-256: accepted by Go's TLS stack (weed), OpenSSL (pgBackRest) and Python's ssl alike, and fast to make.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> Key | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _same_key(cert: x509.Certificate, key: Key) -> bool:
    return cert.public_key() == key.public_key()


def _expires_soon(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() < RENEW_BEFORE


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def required_names(extra: Iterable[str] = ()) -> list[str]:
    """The SANs a store certificate must carry: loopback plus `extra`, deduplicated, in order."""
    names: list[str] = []
    for name in (*BASE_NAMES, *extra):
        name = name.strip()
        if name and name not in names:
            names.append(name)
    return names


def cert_names(cert: x509.Certificate) -> set[str]:
    """The SANs of `cert` as plain strings (IPs normalised the way `ipaddress` prints them)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def _normalise(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _ca_is_valid(cert: x509.Certificate | None, key: Key | None) -> bool:
    if cert is None or key is None or not _same_key(cert, key) or _expires_soon(cert):
        return False
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def ensure_ca(cert_path: Path, key_path: Path, *, common_name: str = "appliance host CA") -> bool:
    """Create the host CA unless a valid one is there; True if it was (re)created.

    The key is 0600 (root), the certificate 0644: every client on the host needs to trust it.
    """
    ensure_dir(cert_path.parent, 0o755)
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if _ca_is_valid(cert, key):
        changed = fix_mode(key_path, 0o600)
        return fix_mode(cert_path, 0o644) or changed
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a CA certificate on disk without its key would be trusted but unusable.
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _leaf_is_valid(
    cert: x509.Certificate | None, key: Key | None, ca: x509.Certificate, names: Sequence[str]
) -> bool:
    if cert is None or key is None or not _same_key(cert, key) or _expires_soon(cert):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    have = {_normalise(n) for n in cert_names(cert)}
    return all(_normalise(n) in have for n in names)


def leaf_is_current(*, ca_cert: Path, cert_path: Path, key_path: Path, names: Sequence[str]) -> bool:
    """What `ensure_leaf_cert` would leave alone: signed by the CA, for `names`, its key, not expiring soon."""
    ca = _load_cert(ca_cert)
    return ca is not None and _leaf_is_valid(_load_cert(cert_path), _load_key(key_path), ca, names)


def ca_is_current(cert_path: Path, key_path: Path) -> bool:
    return _ca_is_valid(_load_cert(cert_path), _load_key(key_path))


def ensure_leaf_cert(
    *,
    ca_cert: Path,
    ca_key: Path,
    cert_path: Path,
    key_path: Path,
    names: Sequence[str],
    client_auth: bool = False,
    owner: str | None = None,
) -> bool:
    """Issue a certificate for `names` signed by the CA unless a valid one is there; True on change.

    An existing key is kept when only the certificate needs renewing, so nothing pinned to it breaks.
    `client_auth` adds the clientAuth usage, for certificates weed also presents when it dials (gRPC mTLS).
    """
    ca = _load_cert(ca_cert)
    signer = _load_key(ca_key)
    if ca is None or signer is None:
        raise FileNotFoundError(f"CA {ca_cert} / {ca_key} missing or unreadable; run ensure_ca first")
    ids = owner_ids(owner)
    cert, key = _load_cert(cert_path), _load_key(key_path)
    if _leaf_is_valid(cert, key, ca, names):
        changed = fix_mode(key_path, 0o600, ids)
        return fix_mode(cert_path, 0o644, ids) or changed
    key_changed = key is None
    if key is None:
        key = _new_key()
    now = _now()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        # Never outlive the CA: a chain with an expired root fails however fresh the leaf is.
        .not_valid_after(min(now + LEAF_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )
    if key_changed:
        write_atomic(key_path, _key_pem(key), 0o600, ids)
    write_atomic(cert_path, leaf.public_bytes(serialization.Encoding.PEM), 0o644, ids)
    return True


def store_names(host: HostConfig, extra_names: Iterable[str] = ()) -> list[str]:
    """SANs of the store's S3 certificate: loopback, the bind address, and whatever the operator adds."""
    return required_names([host.objectstore.bind_address, *extra_names])


def ensure_store_tls(host: HostConfig, extra_names: Iterable[str] = (), owner: str | None = None) -> bool:
    """The CA, the S3 server certificate and the gRPC mTLS certificate of the embedded store.

    `owner` (the store's OS user) gets the server keys; the CA key stays root's. True if anything changed.
    """
    paths = store_paths(host)
    changed = ensure_ca(paths.ca_cert, paths.ca_key)
    changed |= ensure_dir(paths.conf_dir, 0o700, owner_ids(owner))
    changed |= ensure_leaf_cert(
        ca_cert=paths.ca_cert, ca_key=paths.ca_key, cert_path=paths.server_cert, key_path=paths.server_key,
        names=store_names(host, extra_names), owner=owner,
    )
    # gRPC peers are identified by CA membership, not host name (weed does not check names there), so the
    # loopback names suffice; clientAuth lets the same certificate serve both ends of every gRPC call.
    changed |= ensure_leaf_cert(
        ca_cert=paths.ca_cert, ca_key=paths.ca_key, cert_path=paths.grpc_cert, key_path=paths.grpc_key,
        names=store_names(host), client_auth=True, owner=owner,
    )
    return changed
