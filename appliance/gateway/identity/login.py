"""The browser login through the gateway: OAuth 2.0 Authorization Code with PKCE (S256), state and nonce.

GET /api/auth/login stores what the callback must find (`appliance.login_states`: state and the browser-binding
cookie hashed, nonce, PKCE verifier, where to return) and sends the browser to the issuer. GET /api/auth/callback
takes the state once (deleted as it is read), checks it belongs to this browser, exchanges the code (with the
verifier and the gateway's client secret) and verifies the ID token (issuer, audience, signature, nonce).

`return_to` may only name the tenant's own origins (its hostnames, and `gateway.cors_origins`): never an open
redirect.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode, urlsplit

from appliance.config import TenantConfig
from appliance.gateway.core.db import Connection
from appliance.gateway.domain.access import fetch_one
from appliance.gateway.identity.issuers import Issuer, IssuerError, VerifiedToken
from appliance.identity.provider import CALLBACK_PATH, tenant_origins

LOGIN_SCOPES: Final = "openid email profile"
MAX_RETURN_TO: Final = 2048


class LoginError(Exception):
    """A login that cannot go on; `status` and `code` for the answer, `reason` for the audit trail."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason or code


def _hash(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def allowed_origins(tenant: TenantConfig) -> list[str]:
    return [*tenant_origins(tenant), *tenant.gateway.cors_origins]


def request_origin(tenant: TenantConfig, scheme: str, host: str | None) -> str:
    """The tenant origin a request came in on (through the front door), else the tenant's URL."""
    candidate = f"{scheme}://{(host or '').lower()}"
    return candidate if candidate in tenant_origins(tenant) else tenant.url


def checked_return_to(tenant: TenantConfig, origin: str, return_to: str | None) -> str:
    """An absolute URL on one of the tenant's origins; a path is taken on `origin`. LoginError otherwise."""
    target = (return_to or "/").strip()
    if len(target) > MAX_RETURN_TO or any(c in target for c in "\\\r\n\t\0"):
        raise LoginError(400, "invalid_return_to", "return_to is not a URL of this tenant")
    if target.startswith("/") and not target.startswith("//"):
        return origin + target
    parts = urlsplit(target)
    if parts.scheme not in ("https", "http") or parts.username or parts.password or not parts.netloc:
        raise LoginError(400, "invalid_return_to", "return_to is not a URL of this tenant")
    if f"{parts.scheme}://{parts.netloc.lower()}" not in allowed_origins(tenant):
        raise LoginError(400, "invalid_return_to", "return_to is not a URL of this tenant")
    return target


@dataclass(frozen=True)
class Started:
    redirect_to: str
    binding: str


async def start(conn: Connection, issuer: Issuer, *, return_to: str, redirect_uri: str,
                client: str, ttl_s: int) -> Started:
    try:
        metadata = await issuer.metadata()
    except IssuerError:
        raise LoginError(503, "issuer_unavailable", "the identity provider cannot be reached; try again soon",
                         "issuer_unavailable") from None
    state, nonce, binding = (secrets.token_urlsafe(32) for _ in range(3))
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    # Logins that were never finished are deleted as new ones start (no sweeper needed); one commit for both.
    async with conn.transaction():
        await conn.execute("DELETE FROM appliance.login_states WHERE expires_at < now()")
        await conn.execute(
            "INSERT INTO appliance.login_states (state_hash, binding_hash, issuer_name, nonce, code_verifier, "
            "return_to, client, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
            _hash(state), _hash(binding), issuer.config.name, nonce, verifier, return_to, client, float(ttl_s))
    query = urlencode({
        "response_type": "code", "client_id": issuer.config.client_id, "redirect_uri": redirect_uri,
        "scope": LOGIN_SCOPES, "state": state, "nonce": nonce, "code_challenge": challenge,
        "code_challenge_method": "S256",
    })
    endpoint = str(metadata["authorization_endpoint"])
    return Started(f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", binding)


@dataclass(frozen=True)
class Pending:
    issuer_name: str
    nonce: str
    code_verifier: str
    return_to: str


async def take_state(conn: Connection, state: str | None, binding: str | None) -> Pending:
    """The login a callback finishes, taken once (a state is good for one callback), or LoginError."""
    if not state or len(state) > 200:
        raise LoginError(400, "invalid_state", "this login is unknown or was used already; start again",
                         "missing_state")
    row = await fetch_one(
        conn, "DELETE FROM appliance.login_states WHERE state_hash = $1 "
              "RETURNING binding_hash, issuer_name, nonce, code_verifier, return_to, expires_at < now() AS expired",
        _hash(state))
    if row is None:
        raise LoginError(400, "invalid_state", "this login is unknown or was used already; start again",
                         "unknown_state")
    if row["expired"]:
        raise LoginError(400, "invalid_state", "this login took too long; start again", "expired_state")
    if not binding or _hash(binding) != bytes(row["binding_hash"]):
        # The callback came to another browser than the one that started the login (login CSRF).
        raise LoginError(400, "invalid_state", "this login was started in another browser; start again",
                         "browser_mismatch")
    return Pending(row["issuer_name"], row["nonce"], row["code_verifier"], row["return_to"])


async def redeem(issuer: Issuer, pending: Pending, code: str, redirect_uri: str) -> VerifiedToken:
    """The code exchanged at the issuer's token endpoint, and its ID token verified. LoginError otherwise."""
    from appliance.gateway.core.security import TokenError

    try:
        metadata = await issuer.metadata()
        answer = await issuer.post_form(
            str(metadata["token_endpoint"]),
            {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
             "code_verifier": pending.code_verifier},
            auth=(issuer.config.client_id, issuer.config.client_secret()),
        )
    except (IssuerError, OSError):
        raise LoginError(503, "issuer_unavailable", "the identity provider cannot be reached; try again soon",
                         "issuer_unavailable") from None
    if "error" in answer or not isinstance(answer.get("id_token"), str):
        raise LoginError(401, "login_failed", "the identity provider did not accept this login; start again",
                         f"code_refused:{answer.get('error', 'no_id_token')}")
    try:
        return await issuer.verify(answer["id_token"], issuer.config.client_id, nonce=pending.nonce)
    except TokenError as exc:
        raise LoginError(401, "login_failed", "the identity provider's answer did not verify; start again",
                         f"id_token_{exc.reason}") from None


def redirect_uri_for(origin: str) -> str:
    return origin + CALLBACK_PATH
