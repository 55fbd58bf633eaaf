"""The operator's certificate files for a tenant on `tls: files` are checked before they are served (issue 16)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import TenantConfig, host_config
from appliance.frontdoor.tls import operator_files_problem

NAME = "acme.example.com"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _cert(key: ec.EllipticCurvePrivateKey, names: list[str], days: int = 30) -> bytes:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=max(1, -days) + 1))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _tenant(tmp_path: Path, cert: bytes, key: bytes) -> TenantConfig:
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    files = {"cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    host = host_config("box", {"tenants": {"acme": {"slot": 1, "frontdoor": {"hostnames": [NAME], "tls": "files",
                                                                         **files}}}})
    return host.tenant("acme")


def test_a_matching_current_certificate_for_the_tenants_names_is_accepted(tmp_path: Path) -> None:
    key = _key()
    assert operator_files_problem(_tenant(tmp_path, _cert(key, [NAME, "www.example.com"]), _pem_key(key))) is None


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    problem = operator_files_problem(_tenant(tmp_path, _cert(_key(), [NAME]), _pem_key(_key())))
    assert problem and "is not the key of" in problem


def test_a_certificate_for_other_names_is_refused(tmp_path: Path) -> None:
    key = _key()
    problem = operator_files_problem(_tenant(tmp_path, _cert(key, ["other.example.com"]), _pem_key(key)))
    assert problem and f"does not name ['{NAME}']" in problem


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    key = _key()
    problem = operator_files_problem(_tenant(tmp_path, _cert(key, [NAME], days=-1), _pem_key(key)))
    assert problem and "expired on" in problem


@pytest.mark.parametrize(("cert", "key", "message"), [
    (b"not a certificate", None, "not a readable PEM certificate"),
    (b"", None, "not a readable PEM certificate"),
    (None, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", "not a readable, unencrypted"),
    (None, "encrypted", "not a readable, unencrypted"),
])
def test_unreadable_files_are_refused_naming_the_file(tmp_path: Path, cert: bytes | None, key: bytes | str | None,
                                                     message: str) -> None:
    real_key = _key()
    cert_bytes = cert if cert is not None else _cert(real_key, [NAME])
    key_bytes = _pem_key(real_key, b"secret") if key == "encrypted" else (key or _pem_key(real_key))
    assert isinstance(key_bytes, bytes)
    problem = operator_files_problem(_tenant(tmp_path, cert_bytes, key_bytes))
    assert problem and message in problem and str(tmp_path) in problem


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    key = _key()
    tenant = _tenant(tmp_path, _cert(key, [NAME]), _pem_key(key))
    (tmp_path / "c.pem").unlink()
    problem = operator_files_problem(tenant)
    assert problem and str(tmp_path / "c.pem") in problem
