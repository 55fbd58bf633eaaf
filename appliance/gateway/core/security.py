"""Tokens, keys and hashes: the tenant's JWTs (EdDSA), signing key rotation, API keys, invite codes, and the
encryption of `secrets.value`.

Tokens
------
Signed with the tenant's Ed25519 key (secret `jwt_signing_key`), header `{"alg": "EdDSA", "typ": "JWT",
"kid": <RFC 7638 thumbprint of the public key>}`, claims `iss` (the tenant's gateway URL), `aud` (the tenant
id), `sub` (the principal's UUID), `iat`, `nbf`, `exp`, `jti`. Verification accepts exactly that algorithm and a
kid the tenant knows: the current key, or a key rotated out less than `gateway.key_rotation_grace_s` ago
(kept, public part only, in `jwt_previous_keys.json` in the tenant's secrets dir). So `alg: none`, HS256 signed
with the public key, another tenant's key (unknown kid), a wrong audience or issuer, an expired token and one not
valid yet are all refused, each with its own reason.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.config import TenantConfig
from appliance.gateway.core.config import gateway_url, previous_keys_file

ALGORITHM: Final = "EdDSA"
CLOCK_LEEWAY_S: Final = 5


class TokenError(Exception):
    """A token that does not authenticate anyone; `reason` is a stable code (safe to log and to audit)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(jwk.encode()).digest())


def load_private_key(pem: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("jwt_signing_key is not an Ed25519 private key")
    return key


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass(frozen=True)
class PreviousKey:
    kid: str
    public_key: Ed25519PublicKey
    retired_at: float


def read_previous_keys(path: Path) -> list[PreviousKey]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    keys = []
    for item in data.get("keys", []):
        public = serialization.load_pem_public_key(item["public_key_pem"].encode())
        if isinstance(public, Ed25519PublicKey):
            keys.append(PreviousKey(str(item["kid"]), public, float(item["retired_at"])))
    return keys


@dataclass(frozen=True)
class Claims:
    subject: uuid.UUID
    token_id: str
    expires_at: int
    key_id: str
    raw: Mapping[str, Any]


class Keyring:
    """The tenant's signing key and the public keys still in their grace period, reloaded when the files change
    (checked at most once a second), so a rotation reaches a running gateway without a restart."""

    def __init__(self, key_file: Path, previous_file: Path, issuer: str, audience: str, grace_s: int) -> None:
        self.key_file = key_file
        self.previous_file = previous_file
        self.issuer = issuer
        self.audience = audience
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._private: Ed25519PrivateKey | None = None
        self._kid = ""
        self._verifiers: dict[str, tuple[Ed25519PublicKey, float | None]] = {}
        self._verified: dict[str, tuple[Claims, float, tuple[int, int] | None]] = {}

    @classmethod
    def for_tenant(cls, tenant: TenantConfig) -> Keyring:
        return cls(tenant.secret_path("jwt_signing_key"), previous_keys_file(tenant), gateway_url(tenant),
                   tenant.id, tenant.gateway.key_rotation_grace_s)

    def _file_stamp(self) -> tuple[int, int]:
        def mtime(path: Path) -> int:
            try:
                return path.stat().st_mtime_ns
            except FileNotFoundError:
                return 0

        return mtime(self.key_file), mtime(self.previous_file)

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._private is not None and now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp and self._private is not None:
                return
            private = load_private_key(self.key_file.read_text())
            kid = key_id(private.public_key())
            verifiers: dict[str, tuple[Ed25519PublicKey, float | None]] = {}
            for previous in read_previous_keys(self.previous_file):
                verifiers[previous.kid] = (previous.public_key, previous.retired_at + self.grace_s)
            verifiers[kid] = (private.public_key(), None)
            self._private, self._kid, self._verifiers, self._stamp = private, kid, verifiers, stamp

    @property
    def current_kid(self) -> str:
        self._refresh()
        return self._kid

    def issue(self, subject: uuid.UUID | str, ttl_s: int, extra: Mapping[str, Any] | None = None) -> str:
        self._refresh()
        assert self._private is not None
        now = int(time.time())
        claims: dict[str, Any] = {
            **(extra or {}),
            "iss": self.issuer, "aud": self.audience, "sub": str(uuid.UUID(str(subject))),
            "iat": now, "nbf": now, "exp": now + int(ttl_s), "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._private, algorithm=ALGORITHM, headers={"kid": self._kid, "typ": "JWT"})

    def verify(self, token: str) -> Claims:
        """The token's claims, or TokenError. Verified tokens are remembered (by their exact text) until they
        expire, their key retires, the key files change or a minute passes, whichever comes first: clients send
        the same token many times, and re-verifying costs more than the rest of a proxied read."""
        self._refresh()
        now = time.time()
        cached = self._verified.get(token)
        if cached is not None:
            claims, good_until, stamp = cached
            if now < good_until and stamp == self._stamp:
                return claims
            self._verified.pop(token, None)
        claims = self._verify(token)
        valid_until = self._verifiers[claims.key_id][1]
        good_until = min(claims.expires_at + CLOCK_LEEWAY_S, now + 60, valid_until or now + 60)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = (claims, good_until, self._stamp)
        return claims

    def _verify(self, token: str) -> Claims:
        if len(token) > 4096:
            raise TokenError("malformed", "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "token is not a JWT") from None
        if header.get("alg") != ALGORITHM:
            # Only EdDSA: refuses `none` and HS256 "signed" with the public key (algorithm confusion).
            raise TokenError("bad_algorithm", "token algorithm not accepted")
        kid = header.get("kid")
        entry = self._verifiers.get(kid) if isinstance(kid, str) else None
        if entry is None:
            raise TokenError("unknown_key", "token signed by an unknown key")
        public_key, valid_until = entry
        if valid_until is not None and time.time() > valid_until:
            raise TokenError("retired_key", "token signed by a retired key")
        claims = decode_claims(token, public_key, ALGORITHM, audience=self.audience, issuer=self.issuer,
                               require=("exp", "iat", "sub", "aud", "iss"))
        try:
            subject = uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise TokenError("invalid", "token subject is not a principal id") from None
        return Claims(subject, str(claims.get("jti", "")), int(claims["exp"]), str(kid), claims)


def decode_claims(token: str, key: Any, algorithm: str, *, audience: str, issuer: str,
                  require: tuple[str, ...]) -> dict[str, Any]:
    """A JWT's claims once its signature (by `key`, with `algorithm` only), audience, issuer and times check
    out; otherwise TokenError with a stable reason. Shared by the tenant's own tokens and its issuers'."""
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=issuer,
                                            leeway=CLOCK_LEEWAY_S, options={"require": list(require)})
    except jwt.ExpiredSignatureError:
        raise TokenError("expired", "token expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("not_yet_valid", "token not valid yet") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_audience", "token is not for this tenant") from None
    except jwt.InvalidIssuerError:
        raise TokenError("wrong_issuer", "token from another issuer") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature", "token signature invalid") from None
    except jwt.PyJWTError:
        raise TokenError("invalid", "token invalid") from None
    if isinstance(claims.get("iat"), int | float) and claims["iat"] > time.time() + CLOCK_LEEWAY_S:
        raise TokenError("not_yet_valid", "token issued in the future")
    return claims


# -- rotation -------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, content: str, uid: int, gid: int, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(PermissionError):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rotate_signing_key(tenant: TenantConfig) -> tuple[str, str]:
    """Replace the tenant's signing key; the old public key keeps verifying for the grace period.

    Returns (old kid, new kid). The previous-keys file is written before the new key, so there is no moment in
    which tokens signed by the old key are refused; keys past their grace period are dropped from it."""
    key_file = tenant.secret_path("jwt_signing_key")
    previous = previous_keys_file(tenant)
    lock_path = tenant.secrets_dir / ".jwt_rotation.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = key_file.stat()
        old = load_private_key(key_file.read_text())
        old_kid = key_id(old.public_key())
        now = time.time()
        kept = [k for k in read_previous_keys(previous)
                if k.retired_at + tenant.gateway.key_rotation_grace_s > now and k.kid != old_kid]
        kept.append(PreviousKey(old_kid, old.public_key(), now))
        document = {"keys": [{"kid": k.kid, "public_key_pem": _public_pem(k.public_key), "retired_at": k.retired_at}
                             for k in kept]}
        # Both files keep the key file's owners and mode (the deploy's: appliance.secrets.secret_access).
        mode = stat.S_IMODE(st.st_mode)
        _write_atomic(previous, json.dumps(document, indent=2) + "\n", st.st_uid, st.st_gid, mode)
        new = Ed25519PrivateKey.generate()
        pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        _write_atomic(key_file, pem, st.st_uid, st.st_gid, mode)
        return old_kid, key_id(new.public_key())


# -- API keys and invite codes ---------------------------------------------------------------------------------

_API_KEY = re.compile(r"^apk_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")
_INVITE = re.compile(r"^inv_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


def new_api_key(key_id_: uuid.UUID) -> str:
    """`apk_<key id hex>_<256 random bits>`: the id finds the row, the whole key is compared by hash."""
    return f"apk_{key_id_.hex}_{secrets.token_urlsafe(32)}"


def new_invite_code(invite_id: uuid.UUID) -> str:
    return f"inv_{invite_id.hex}_{secrets.token_urlsafe(32)}"


def _parse(pattern: re.Pattern[str], text: str) -> uuid.UUID | None:
    match = pattern.match(text)
    return uuid.UUID(match.group(1)) if match else None


def parse_api_key(text: str) -> uuid.UUID | None:
    return _parse(_API_KEY, text)


def parse_invite_code(text: str) -> uuid.UUID | None:
    return _parse(_INVITE, text)


def secret_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def hash_matches(text: str, stored: bytes) -> bool:
    return hmac.compare_digest(secret_hash(text), bytes(stored))


# -- secrets.value encryption ----------------------------------------------------------------------------------

_SECRET_FORMAT: Final = b"\x01"


def _aad(secret_id: uuid.UUID, house_id: uuid.UUID) -> bytes:
    return b"appliance-secret-v1:" + secret_id.bytes + house_id.bytes


def encrypt_secret(key_b64: str, secret_id: uuid.UUID, house_id: uuid.UUID, plaintext: str) -> bytes:
    """AES-256-GCM under the tenant's secrets_encryption_key, bound to the row's id and house: 0x01 || nonce ||
    ciphertext+tag."""
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(base64.b64decode(key_b64)).encrypt(nonce, plaintext.encode(), _aad(secret_id, house_id))
    return _SECRET_FORMAT + nonce + sealed


def decrypt_secret(key_b64: str, secret_id: uuid.UUID, house_id: uuid.UUID, stored: bytes) -> str:
    stored = bytes(stored)
    if stored[:1] != _SECRET_FORMAT:
        raise ValueError("unknown secret format")
    try:
        plain = AESGCM(base64.b64decode(key_b64)).decrypt(stored[1:13], stored[13:], _aad(secret_id, house_id))
    except InvalidTag:
        raise ValueError("secret does not decrypt with this key for this row") from None
    return plain.decode()
