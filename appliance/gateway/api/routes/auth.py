"""POST /api/auth/token: an API key in, a short-lived JWT for the key's principal out.

Refusals all look the same to the caller (no hint whether the key exists) and are audited; callers are rate
limited by address before the key is looked at.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from appliance.audit.chain import AuditEvent
from appliance.gateway.api.deps import GatewayDep, client_address, limit_anonymous
from appliance.gateway.core.errors import ApiError, error_responses
from appliance.gateway.core.security import hash_matches, parse_api_key
from appliance.gateway.domain.access import fetch_one
from appliance.gateway.domain.models import TokenRequest, TokenResult

router = APIRouter(prefix="/api/auth", tags=["auth"])

_KEY = (
    "SELECT k.principal_id, k.principal_kind, k.house_id, k.key_hash, "
    "(k.expires_at IS NULL OR k.expires_at > now()) AS valid, "
    "(k.principal_kind = 'user' OR EXISTS (SELECT 1 FROM public.agents a WHERE a.id = k.principal_id "
    " AND a.deleted_at IS NULL)) AS principal_live "
    "FROM public.api_keys k WHERE k.id = $1 AND k.deleted_at IS NULL FOR UPDATE OF k"
)


@router.post("/token", response_model=TokenResult, responses=error_responses(401, 422, 429))
async def exchange_api_key(body: TokenRequest, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    client = client_address(request)
    limit_anonymous(gateway, client)
    key_id = parse_api_key(body.api_key)
    refused = ApiError(401, "invalid_api_key", "API key not accepted")
    if key_id is None:
        await gateway.audit.now(AuditEvent("anonymous", "auth.api_key_refused", None, None,
                                           {"reason": "malformed", "client": client}))
        raise refused
    async with gateway.db.connection() as conn, conn.transaction():
        row = await fetch_one(conn, _KEY, key_id)
        reason = None
        if row is None:
            reason = "unknown_or_revoked"
        elif not hash_matches(body.api_key, row["key_hash"]):
            reason = "wrong_secret"
        elif not row["valid"]:
            reason = "expired"
        elif not row["principal_live"]:
            reason = "principal_deleted"
        if reason is None and row is not None:
            await conn.execute("UPDATE public.api_keys SET last_used_at = now() WHERE id = $1", key_id)
            await gateway.audit.in_transaction(conn, AuditEvent(
                str(row["principal_id"]), "auth.api_key_exchanged", row["house_id"], f"api_key:{key_id}",
                {"client": client, "ttl_s": gateway.settings.token_ttl_s},
            ))
    if reason is not None:
        await gateway.audit.now(AuditEvent("anonymous", "auth.api_key_refused", None, f"api_key:{key_id}",
                                           {"reason": reason, "client": client}))
        raise refused
    assert row is not None
    ttl = gateway.settings.token_ttl_s
    token = gateway.keyring.issue(row["principal_id"], ttl, {"akid": str(key_id)})
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
