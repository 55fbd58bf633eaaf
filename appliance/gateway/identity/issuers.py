"""The OIDC issuers a tenant's gateway accepts: the embedded provider ("local") and the organization's
(`identity.issuers`). For each: its discovery document and JWKS, fetched from the configured issuer only
(never from a URL a token names: no SSRF), cached, and refetched on an unknown `kid` at most once per
`identity.jwks_refetch_min_s`; and verification of the tokens it signs.

The embedded provider is reached on the host's loopback (its back channel) while its issuer is its public URL
behind the front door: requests for URLs under the public issuer go to the back channel with the public host in
X-Forwarded-Host/-Proto, so what the provider answers names its public URLs, exactly as browsers see them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
from jwt.algorithms import get_default_algorithms

from appliance.config import EMBEDDED_ISSUER_NAME, IssuerSettings, RoleGrant, TenantConfig
from appliance.gateway.core.security import TokenError, decode_claims
from appliance.identity import provider
from appliance.identity.issuer_secrets import issuer_secret_path

# Discovery documents change rarely; a day keeps an issuer's endpoint moves visible without a restart.
DISCOVERY_TTL_S: Final = 86400.0
HTTP_TIMEOUT_S: Final = 10.0
# An issuer's answer (discovery, JWKS, token response) larger than this is refused: none is legitimately big.
MAX_ANSWER_BYTES: Final = 256 * 1024
MAX_TOKEN_CHARS: Final = 16 * 1024
FAILED_FETCH_RETRY_S: Final = 2.0


class IssuerError(Exception):
    """An issuer that cannot be used right now (unreachable, answered nonsense); message safe to log."""


@dataclass(frozen=True)
class IssuerConfig:
    name: str
    issuer: str
    client_id: str
    client_secret_file: str
    subject_claim: str
    access_audience: str
    algorithms: tuple[str, ...]
    roles: tuple[RoleGrant, ...]
    ca_file: str = ""
    # The embedded provider's loopback base (IDP_PATH included), with the public host it stands for.
    backchannel: str = ""
    public_host: str = ""

    def client_secret(self) -> str:
        with open(self.client_secret_file) as fh:
            return fh.read().strip()


def issuer_configs(tenant: TenantConfig) -> list[IssuerConfig]:
    """Every issuer the tenant accepts, the embedded one first (when it runs one)."""
    configs = []
    if tenant.identity.embedded:
        public = urlsplit(provider.issuer_url(tenant))
        configs.append(IssuerConfig(
            name=EMBEDDED_ISSUER_NAME, issuer=provider.issuer_url(tenant), client_id=provider.GATEWAY_CLIENT_ID,
            client_secret_file=str(tenant.secret_path("identity_gateway_client_secret")), subject_claim="sub",
            access_audience=provider.api_resource(tenant), algorithms=("EdDSA", "RS256"), roles=(),
            backchannel=provider.internal_url(tenant), public_host=public.netloc,
        ))
    for external in tenant.identity.issuers:
        configs.append(_external(tenant, external))
    return configs


def _external(tenant: TenantConfig, settings: IssuerSettings) -> IssuerConfig:
    return IssuerConfig(
        name=settings.name, issuer=settings.issuer, client_id=settings.client_id,
        client_secret_file=str(issuer_secret_path(tenant, settings)), subject_claim=settings.subject_claim,
        access_audience=settings.expected_audience, algorithms=settings.algorithms, roles=settings.roles,
        ca_file=settings.ca_file,
    )


@dataclass
class VerifiedToken:
    issuer: IssuerConfig
    subject: str
    claims: dict[str, Any]
    expires_at: float


@dataclass
class _Keys:
    by_kid: dict[str, Any] = field(default_factory=dict)
    fetched_at: float = 0.0


class Issuer:
    """One issuer at run time: its metadata and keys, and the HTTP client that reaches it."""

    def __init__(self, config: IssuerConfig, refetch_min_s: float) -> None:
        self.config = config
        self.refetch_min_s = refetch_min_s
        verify: ssl.SSLContext | bool = True
        if config.ca_file:
            verify = ssl.create_default_context(cafile=config.ca_file)
        self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=verify, follow_redirects=False,
                                       trust_env=False)
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys = _Keys()
        self._lock = asyncio.Lock()
        # How many times the JWKS was fetched (tests and diagnostics: an unknown-kid flood must not raise it).
        self.jwks_fetches = 0

    async def close(self) -> None:
        await self._http.aclose()

    # -- reaching it ------------------------------------------------------------------------------------------

    def _route(self, url: str) -> tuple[str, dict[str, str]]:
        """Where to send a request for `url`: the back channel for the embedded provider's own URLs."""
        if self.config.backchannel and url.startswith(self.config.issuer + "/"):
            headers = {"X-Forwarded-Host": self.config.public_host, "X-Forwarded-Proto": "https"}
            return self.config.backchannel + url[len(self.config.issuer):], headers
        return url, {}

    async def _get_json(self, url: str) -> dict[str, Any]:
        target, headers = self._route(url)
        try:
            response = await self._http.get(target, headers={**headers, "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IssuerError(f"issuer {self.config.name}: GET {url} failed: {type(exc).__name__}") from None
        return _json_answer(self.config.name, url, response)

    async def post_form(self, url: str, form: dict[str, str], auth: tuple[str, str] | None) -> dict[str, Any]:
        target, headers = self._route(url)
        try:
            response = await self._http.post(target, data=form, headers={**headers, "Accept": "application/json"},
                                             auth=auth)
        except httpx.HTTPError as exc:
            raise IssuerError(f"issuer {self.config.name}: POST {url} failed: {type(exc).__name__}") from None
        return _json_answer(self.config.name, url, response, errors_ok=True)

    # -- what it publishes ------------------------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata_at < DISCOVERY_TTL_S:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < DISCOVERY_TTL_S:
                return self._metadata
            document = await self._get_json(self.config.issuer + "/.well-known/openid-configuration")
            if document.get("issuer") != self.config.issuer:
                raise IssuerError(f"issuer {self.config.name}: its discovery document names issuer "
                                  f"{str(document.get('issuer'))[:200]!r}, not {self.config.issuer!r}")
            # Endpoints over TLS, except the embedded provider's own when no front door serves it (plain HTTP
            # on the host's loopback, like its issuer).
            scheme = "http://" if self.config.backchannel and self.config.issuer.startswith("http://") else "https://"
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                value = document.get(key)
                if not isinstance(value, str) or not value.startswith(scheme):
                    raise IssuerError(f"issuer {self.config.name}: discovery {key} is not an {scheme[:-3]} URL")
            self._metadata, self._metadata_at = document, time.monotonic()
            return document

    async def _refresh_keys(self, *, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._keys.fetched_at and (not force or now - self._keys.fetched_at < self.refetch_min_s):
                return
            # Stamped before the fetch: a failing issuer is asked again no sooner than a healthy one.
            self._keys.fetched_at = now
        self.jwks_fetches += 1
        try:
            metadata = await self.metadata()
            document = await self._get_json(str(metadata["jwks_uri"]))
        except IssuerError:
            # A failed fetch may be retried soon (not after the full refetch interval): the issuer may be starting.
            self._keys.fetched_at = now - self.refetch_min_s + FAILED_FETCH_RETRY_S
            raise
        keys: dict[str, Any] = {}
        algorithms = get_default_algorithms()
        for jwk in document.get("keys", []) if isinstance(document.get("keys"), list) else []:
            if not isinstance(jwk, dict) or "d" in jwk or not isinstance(jwk.get("kid"), str):
                continue  # private material or an unnamed key is never used
            alg = jwk.get("alg") or {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}.get(str(jwk.get("kty")), "")
            if alg not in self.config.algorithms or alg not in algorithms:
                continue
            try:
                keys[jwk["kid"]] = (alg, algorithms[alg].from_jwk(json.dumps(jwk)))
            except (jwt.PyJWTError, ValueError, KeyError, TypeError):
                continue
        self._keys = _Keys(keys, now)

    def forget_keys(self) -> None:
        """The issuer's keys changed: the next unknown kid fetches them at once (not limited by the interval)."""
        self._keys = _Keys()

    async def key(self, kid: str) -> tuple[str, Any] | None:
        if kid not in self._keys.by_kid:
            await self._refresh_keys(force=bool(self._keys.fetched_at))
        return self._keys.by_kid.get(kid)

    # -- its tokens -------------------------------------------------------------------------------------------

    async def verify(self, token: str, audience: str, *, nonce: str | None = None) -> VerifiedToken:
        """The claims of a token this issuer signed for `audience`, or TokenError with a stable reason."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("malformed", "token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed", "token is not a JWT") from None
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            # `none`, HS* (a "signature" made with the public key) and anything not allowed for this issuer.
            raise TokenError("bad_algorithm", "token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or len(kid) > 200:
            raise TokenError("unknown_key", "token signed by an unknown key")
        try:
            found = await self.key(kid)
        except IssuerError:
            raise TokenError("issuer_unavailable", "the token's issuer cannot be reached to check it") from None
        if found is None:
            raise TokenError("unknown_key", "token signed by an unknown key")
        key_alg, key = found
        if key_alg != alg:
            raise TokenError("bad_algorithm", "token algorithm does not match its key")
        claims = decode_claims(token, key, alg, audience=audience, issuer=self.config.issuer,
                               require=("exp", "iat", "iss", "aud"))
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenError("bad_nonce", "token nonce does not match the login")
        subject = claims.get(self.config.subject_claim)
        if not isinstance(subject, str | int) or not str(subject) or len(str(subject)) > 255:
            raise TokenError("invalid", f"token has no usable {self.config.subject_claim} claim")
        return VerifiedToken(self.config, str(subject), claims, float(claims["exp"]))


def _json_answer(name: str, url: str, response: httpx.Response, *, errors_ok: bool = False) -> dict[str, Any]:
    if len(response.content) > MAX_ANSWER_BYTES:
        raise IssuerError(f"issuer {name}: {url} answered more than {MAX_ANSWER_BYTES} bytes")
    if response.status_code >= 400 and not (errors_ok and response.status_code < 500):
        raise IssuerError(f"issuer {name}: {url} answered {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise IssuerError(f"issuer {name}: {url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise IssuerError(f"issuer {name}: {url} did not answer a JSON object")
    if response.status_code >= 400:
        document = {"error": str(document.get("error", "error"))[:100], "status": response.status_code}
    return document


class Issuers:
    """The tenant's issuers by name and by issuer URL, with a cache of verified bearer tokens."""

    def __init__(self, tenant: TenantConfig) -> None:
        refetch = float(tenant.identity.jwks_refetch_min_s)
        self.by_name = {c.name: Issuer(c, refetch) for c in issuer_configs(tenant)}
        self.by_url = {i.config.issuer: i for i in self.by_name.values()}

    async def close(self) -> None:
        for issuer in self.by_name.values():
            await issuer.close()

    def for_token(self, token: str) -> Issuer | None:
        """The configured issuer a token claims to come from (nothing about it is checked yet), if any. Read
        straight from the payload: this runs for every token the tenant's own keys do not know."""
        parts = token.split(".")
        if len(parts) != 3 or len(parts[1]) > MAX_TOKEN_CHARS:
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (ValueError, TypeError):
            return None
        iss = payload.get("iss") if isinstance(payload, dict) else None
        return self.by_url.get(iss) if isinstance(iss, str) else None
