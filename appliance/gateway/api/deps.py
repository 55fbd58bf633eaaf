"""Dependencies every route shares: the gateway runtime, and the authenticated, rate-limited principal."""

from __future__ import annotations

import uuid
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from appliance.audit.chain import AuditEvent
from appliance.gateway.access import Principal
from appliance.gateway.core.errors import ApiError
from appliance.gateway.core.ratelimit import retry_after_header
from appliance.gateway.core.security import TokenError
from appliance.gateway.identity.issuers import Issuer
from appliance.gateway.identity.principals import Disabled
from appliance.gateway.runtime import Gateway

_bearer = HTTPBearer(auto_error=False, description="A JWT from `appliance token issue` or POST /api/auth/token")


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


async def get_principal(
    request: Request, gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    client = client_address(request)
    if credentials is None or credentials.scheme.lower() != "bearer":
        limit_anonymous(gateway, client)
        raise ApiError(401, "unauthorized", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    token = credentials.credentials
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
        row = await gateway.db.fetchrow(
            "SELECT 1 AS ok FROM public.api_keys WHERE id = %s AND principal_id = %s AND deleted_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > now())",
            (api_key_id, claims.subject),
        )
        if row is None:
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


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
