"""The embedded provider's signing keys: a JSON Web Key Set of private keys, kept as the tenant secret
`identity_jwks` (0600). oidc-provider signs with the first key of each algorithm and publishes the public part
of every key, so a rotation puts new keys first and keeps the previous ones published (verifiable) for a while.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

# RS256 is what OIDC clients must support (the default id_token algorithm); EdDSA is the tenant's own choice
# for its access tokens (small and fast to verify).
RSA_BITS: Final = 2048
# Retired keys stay published this long, so tokens they signed keep verifying until they expire.
RETIRED_KEEP_S: Final = 7 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def thumbprint(public_members: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required public members, sorted, without whitespace."""
    text = json.dumps(public_members, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(text.encode()).digest())


def _ed25519_jwk() -> dict[str, Any]:
    key = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw_private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    public = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw_public)}
    return {**public, "d": _b64(raw_private), "kid": thumbprint(public), "alg": "EdDSA", "use": "sig"}


def _rsa_jwk() -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    numbers = key.private_numbers()
    pub = numbers.public_numbers
    public = {"e": _int_b64(pub.e), "kty": "RSA", "n": _int_b64(pub.n)}
    return {
        **public, "d": _int_b64(numbers.d), "p": _int_b64(numbers.p), "q": _int_b64(numbers.q),
        "dp": _int_b64(numbers.dmp1), "dq": _int_b64(numbers.dmq1), "qi": _int_b64(numbers.iqmp),
        "kid": thumbprint(public), "alg": "RS256", "use": "sig",
    }


def new_jwks() -> str:
    """A fresh key set (one EdDSA and one RS256 key), as the secret file holds it."""
    return json.dumps({"keys": [_ed25519_jwk(), _rsa_jwk()]}, indent=1) + "\n"


def rotated_jwks(current: str, now: float | None = None) -> tuple[str, list[str], list[str]]:
    """(new document, kids added, kids dropped): new keys first (they sign from now on), the current ones kept
    as retired (published, not signing), and keys retired longer than RETIRED_KEEP_S ago dropped."""
    now = time.time() if now is None else now
    keys = json.loads(current)["keys"]
    kept, dropped = [], []
    for key in keys:
        retired = key.get("retired_at")
        if retired is not None and now - float(retired) > RETIRED_KEEP_S:
            dropped.append(key["kid"])
            continue
        kept.append({**key, "retired_at": retired if retired is not None else int(now)})
    fresh = [_ed25519_jwk(), _rsa_jwk()]
    document = {"keys": [*fresh, *kept]}
    return json.dumps(document, indent=1) + "\n", [k["kid"] for k in fresh], dropped


def public_kids(document: str) -> list[str]:
    return [str(k["kid"]) for k in json.loads(document)["keys"]]
