"""Dependencies every route shares: the gateway runtime, and the authenticated, rate-limited principal."""

from __future__ import annotations

import uuid
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from appliance.audit.chain import AuditEvent
from appliance.gateway.core.errors import ApiError
from appliance.gateway.core.ratelimit import retry_after_header
from appliance.gateway.core.security import TokenError
from appliance.gateway.domain.access import Principal
from appliance.gateway.identity.issuers import Issuer
from appliance.gateway.identity.principals import Disabled
from appliance.gateway.runtime import Gateway


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def limit_anonymous(gateway: Gateway, client: str) -> None:
    wait = gateway.anonymous_limiter.check(client)
    if wait is not None:
        raise ApiError(429, "rate_limited", "too many requests", retry_after_header(wait))


async def get_principal(request: Request) -> Principal:
    """The caller of `request`, authenticated and rate limited (401/429 otherwise)."""
    gateway: Gateway = request.app.state.gateway
    authorization = request.headers.get("authorization")
    scheme, _, token = authorization.partition(" ") if authorization else ("", "", "")
    token = token.strip()
    client = client_address(request)
    if scheme.lower() != "bearer" or not token:
        limit_anonymous(gateway, client)
        raise ApiError(401, "unauthorized", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    remembered = gateway.issuer_bearers.remembered(token)
    if remembered is not None:
        return _limited(gateway, Principal(remembered, client))
    try:
        claims = gateway.keyring.verify(token)
    except TokenError as exc:
        # A key the tenant does not know may be one of its OIDC issuers' (a provider's access token).
        issuer = gateway.issuers.for_token(token) if exc.reason == "unknown_key" else None
        if issuer is None:
            await _refuse_token(gateway, client, exc)
        return await _issuer_principal(gateway, issuer, token, client)
    wait = gateway.limiter.check(str(claims.subject))
    if wait is not None:
        raise ApiError(429, "rate_limited", "too many requests", retry_after_header(wait))
    api_key_id: uuid.UUID | None = None
    if "akid" in claims.raw:
        # Tokens from an API key die with the key: revoking a key cuts its holder off at once.
        try:
            api_key_id = uuid.UUID(str(claims.raw["akid"]))
        except ValueError:
            raise ApiError(401, "invalid_token", "token invalid") from None
        key = await gateway.access.api_key(api_key_id)
        if key is None or not key.live_for(claims.subject):
            await gateway.audit.soon(AuditEvent(str(claims.subject), "auth.token_refused", None,
                                                f"api_key:{api_key_id}", {"reason": "api_key_revoked",
                                                                          "client": client}))
            raise ApiError(401, "invalid_token", "the API key behind this token was revoked",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return Principal(claims.subject, client, api_key_id)


async def _refuse_token(gateway: Gateway, client: str, exc: TokenError, issuer: str | None = None) -> NoReturn:
    limit_anonymous(gateway, client)
    await gateway.audit.soon(AuditEvent("anonymous", "auth.token_refused", None, None,
                                        {"reason": exc.reason, "client": client,
                                         **({"issuer": issuer} if issuer else {})}))
    raise ApiError(401, "invalid_token", exc.message, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def _issuer_principal(gateway: Gateway, issuer: Issuer, token: str, client: str) -> Principal:
    try:
        principal_id = await gateway.issuer_bearers.principal(issuer, token, client)
    except TokenError as exc:
        await _refuse_token(gateway, client, exc, issuer.config.issuer)
    except Disabled:
        await _refuse_token(gateway, client, TokenError("user_disabled", "this account is disabled in this tenant"),
                            issuer.config.issuer)
    return _limited(gateway, Principal(principal_id, client))


def _limited(gateway: Gateway, principal: Principal) -> Principal:
    wait = gateway.limiter.check(str(principal.id))
    if wait is not None:
        raise ApiError(429, "rate_limited", "too many requests", retry_after_header(wait))
    return principal


class _BearerPrincipal(HTTPBearer):
    """`get_principal` as one dependency that OpenAPI still shows as the bearer scheme: FastAPI inspects and
    resolves every dependency of every request, and the three this used to be (the scheme, the runtime and the
    principal) were a measurable share of a read's CPU."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return await get_principal(request)


CurrentPrincipal = Annotated[Principal, Depends(_BearerPrincipal(
    auto_error=False, description="A JWT from `appliance token issue` or POST /api/auth/token"))]
