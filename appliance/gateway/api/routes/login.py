"""People's logins through the tenant's issuers (appliance/gateway/identity/login.py has the protocol):

- GET /api/auth/login?return_to=...&issuer=<name>: to the issuer's login (the embedded provider by default);
- GET /api/auth/callback: back from it; the tenant's session starts (a rotating refresh token in an HttpOnly,
  Secure, SameSite cookie scoped to /api/auth) and the browser returns to `return_to`;
- POST /api/auth/refresh: the tenant's own short-lived access token for the session (the cookie rotates);
- POST /api/auth/logout: the session ends (its refresh token is revoked).

Refresh and logout are authenticated by the cookie alone, so a browser must not be made to send them from
another site: a request carrying an Origin that is not one of the tenant's is refused.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Final

from fastapi import APIRouter, Cookie, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from appliance.audit.chain import AuditEvent
from appliance.config import EMBEDDED_ISSUER_NAME
from appliance.gateway.api.deps import GatewayDep, client_address, limit_anonymous
from appliance.gateway.core.errors import ApiError, error_responses
from appliance.gateway.domain.models import TokenResult
from appliance.gateway.identity import login, sessions
from appliance.gateway.identity.issuers import IssuerError
from appliance.gateway.identity.principals import Disabled, person_for

router = APIRouter(prefix="/api/auth", tags=["auth"])

REFRESH_COOKIE: Final = "__Secure-appliance-refresh"
BINDING_COOKIE: Final = "__Secure-appliance-login"
COOKIE_PATH: Final = "/api/auth"


def _origin(request: Request, gateway: GatewayDep) -> str:
    return login.request_origin(gateway.tenant, request.url.scheme, request.headers.get("host"))


def _error(exc: login.LoginError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


@router.get("/login", status_code=302, responses=error_responses(400, 429, 503))
async def start_login(
    request: Request, gateway: GatewayDep,
    return_to: Annotated[str | None, Query(max_length=login.MAX_RETURN_TO)] = None,
    issuer: Annotated[str, Query(max_length=40)] = EMBEDDED_ISSUER_NAME,
) -> Response:
    """Send the browser to the issuer's login; it comes back to /api/auth/callback."""
    client = client_address(request)
    limit_anonymous(gateway, client)
    chosen = gateway.issuers.by_name.get(issuer)
    if chosen is None:
        raise ApiError(400, "unknown_issuer", "no such identity provider for this tenant")
    origin = _origin(request, gateway)
    try:
        target = login.checked_return_to(gateway.tenant, origin, return_to)
        async with gateway.db.connection() as conn:
            started = await login.start(conn, chosen, return_to=target, redirect_uri=login.redirect_uri_for(origin),
                                        client=client, ttl_s=gateway.tenant.identity.login_ttl_s)
    except login.LoginError as exc:
        raise _error(exc) from None
    response = RedirectResponse(started.redirect_to, status_code=302, headers={"Cache-Control": "no-store"})
    # Lax: the issuer sends the browser back with a top-level GET, possibly from another site.
    response.set_cookie(BINDING_COOKIE, started.binding, max_age=gateway.tenant.identity.login_ttl_s,
                        path=f"{COOKIE_PATH}/callback", secure=True, httponly=True, samesite="lax")
    return response


@router.get("/callback", status_code=303, responses=error_responses(400, 401, 403, 429, 503))
async def finish_login(
    request: Request, gateway: GatewayDep,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=200)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
    binding: Annotated[str | None, Cookie(alias=BINDING_COOKIE)] = None,
) -> Response:
    """Finish a login: the tenant's session starts and the browser goes back where the login began."""
    client = client_address(request)
    limit_anonymous(gateway, client)
    origin = _origin(request, gateway)
    issuer_name = "?"
    try:
        # Autocommit: the state is spent whatever happens next (a code or state is good once).
        async with gateway.db.connection() as conn:
            pending = await login.take_state(conn, state, binding)
        issuer_name = pending.issuer_name
        issuer = gateway.issuers.by_name.get(pending.issuer_name)
        if issuer is None:
            raise login.LoginError(400, "invalid_state", "this login's identity provider is gone; start again",
                                   "issuer_removed")
        if error or not code:
            raise login.LoginError(401, "login_failed", "the login was not completed at the identity provider",
                                   f"issuer_error:{(error or 'no_code')[:60]}")
        verified = await login.redeem(issuer, pending, code, login.redirect_uri_for(origin))
        # One transaction for the person, their session and the login's audit event (one commit, not two).
        async with gateway.db.connection() as conn, conn.transaction():
            person = await person_for(conn, verified, client, interactive=True)
            session = await sessions.create(conn, person.principal_id, issuer.config.issuer,
                                            gateway.tenant.identity.refresh_ttl_s)
            await gateway.audit.in_transaction(conn, AuditEvent(
                str(person.principal_id), "auth.login", None, f"principal:{person.principal_id}",
                {"issuer": issuer.config.issuer, "client": client, "session": str(session.id),
                 "first_login": person.created}))
        if person.roles_changed:
            gateway.access.forget_principal(person.principal_id)
    except login.LoginError as exc:
        await gateway.audit.now(AuditEvent("anonymous", "auth.login_refused", None, None,
                                           {"reason": exc.reason, "issuer": issuer_name, "client": client}))
        raise _error(exc) from None
    except Disabled:
        await gateway.audit.now(AuditEvent("anonymous", "auth.login_refused", None, None,
                                           {"reason": "user_disabled", "issuer": issuer_name, "client": client}))
        raise ApiError(403, "user_disabled", "this account is disabled in this tenant") from None
    response = RedirectResponse(pending.return_to, status_code=303, headers={"Cache-Control": "no-store"})
    _set_refresh(response, gateway, session.token)
    response.delete_cookie(BINDING_COOKIE, path=f"{COOKIE_PATH}/callback", secure=True, httponly=True)
    return response


def _set_refresh(response: Response, gateway: GatewayDep, token: str) -> None:
    settings = gateway.tenant.identity
    response.set_cookie(REFRESH_COOKIE, token, max_age=settings.refresh_ttl_s, path=COOKIE_PATH, secure=True,
                        httponly=True, samesite=settings.cookie_samesite)


def _clear_refresh(response: Response, gateway: GatewayDep) -> None:
    response.delete_cookie(REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True,
                           samesite=gateway.tenant.identity.cookie_samesite)


def _cookie_caller(request: Request, gateway: GatewayDep) -> str:
    """The client address of a request authenticated by the refresh cookie alone, rate limited; one from a page
    of another origin than the tenant's (or the apps' it allows) is refused (CSRF)."""
    client = client_address(request)
    limit_anonymous(gateway, client)
    origin = request.headers.get("origin")
    if origin is not None and origin.lower() not in login.allowed_origins(gateway.tenant):
        raise ApiError(403, "origin_refused", "this origin may not use the tenant's login session")
    return client


@router.post("/refresh", response_model=TokenResult, responses=error_responses(401, 403, 429))
async def refresh(
    request: Request, gateway: GatewayDep,
    token: Annotated[str | None, Cookie(alias=REFRESH_COOKIE, max_length=200)] = None,
) -> Response:
    """A new access token for the session of the refresh cookie (which is replaced by a new one)."""
    client = _cookie_caller(request, gateway)
    refused: sessions.SessionRefused | None = None
    async with gateway.db.connection() as conn, conn.transaction():
        # Committed even when refused: a reused token's session stays ended.
        try:
            session = await sessions.rotate(conn, token)
        except sessions.SessionRefused as exc:
            refused = exc
        else:
            await gateway.audit.in_transaction(conn, AuditEvent(
                str(session.principal_id), "auth.refresh", None, f"principal:{session.principal_id}",
                {"session": str(session.id), "client": client}))
    if refused is not None:
        await gateway.audit.now(AuditEvent(
            str(refused.principal_id) if refused.principal_id else "anonymous", "auth.refresh_refused", None,
            f"principal:{refused.principal_id}" if refused.principal_id else None,
            {"reason": refused.reason, "client": client,
             **({"session": str(refused.session_id)} if refused.session_id else {})}))
        answer = JSONResponse({"error": {"code": "invalid_session", "message": "no valid login session; log in"}},
                              status_code=401, headers={"Cache-Control": "no-store"})
        _clear_refresh(answer, gateway)
        return answer
    ttl = gateway.tenant.identity.access_token_ttl_s
    access = gateway.keyring.issue(session.principal_id, ttl, {"sid": str(session.id)})
    response = JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": ttl},
                            headers={"Cache-Control": "no-store"})
    _set_refresh(response, gateway, session.token)
    return response


@router.post("/logout", responses=error_responses(403, 429))
async def logout(
    request: Request, gateway: GatewayDep,
    token: Annotated[str | None, Cookie(alias=REFRESH_COOKIE, max_length=200)] = None,
) -> Response:
    """End the login session of the refresh cookie; say where to end the provider's own session too."""
    client = _cookie_caller(request, gateway)
    async with gateway.db.connection() as conn:
        async with conn.transaction():
            ended = await sessions.end(conn, token)
        if ended is not None:
            await gateway.audit.now(AuditEvent(str(ended.principal_id), "auth.logout", None,
                                               f"principal:{ended.principal_id}",
                                               {"session": str(ended.id), "client": client}), conn)
    body: dict[str, Any] = {"logged_out": ended is not None, "end_session_endpoint": None}
    issuer = gateway.issuers.by_url.get(ended.issuer) if ended is not None else None
    if issuer is not None:
        # The provider away: the tenant's own session has ended all the same.
        with contextlib.suppress(IssuerError):
            body["end_session_endpoint"] = (await issuer.metadata()).get("end_session_endpoint")
    response = JSONResponse(body, headers={"Cache-Control": "no-store"})
    _clear_refresh(response, gateway)
    return response
