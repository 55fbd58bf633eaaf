"""API keys: for external agents (and users' scripts), exchanged at POST /api/auth/token for short-lived JWTs.

A key is shown once at creation and stored as its SHA-256. A user may create keys for themselves; an admin of a
house may create keys for that house's agents. The key's principal, its creator, or an admin of the agent's
house may revoke it; tokens obtained with a revoked key stop working at once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import insert_row, load_live, principal_kind, row_json, soft_delete, written
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import error_responses, not_found
from appliance.gateway.core.security import new_api_key, secret_hash
from appliance.gateway.domain.access import Refused, current_txid, membership, require, write_transaction
from appliance.gateway.domain.models import ApiKeyCreate, WriteResult

router = APIRouter(prefix="/api/api_keys", tags=["api_keys"], responses=error_responses(401, 403, 404, 422, 429))

HIDDEN = frozenset({"key_hash"})


@router.get("")
async def list_api_keys(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    """The caller's own keys, and the keys of agents in houses the caller administers (never the keys)."""
    rows = await gateway.db.fetchall(
        "SELECT k.id, k.principal_id, k.principal_kind, k.house_id, k.name, k.created_by, k.created_at, "
        "k.expires_at, k.last_used_at FROM public.api_keys k WHERE k.deleted_at IS NULL AND (k.principal_id = $1 "
        " OR k.house_id IN (SELECT m.house_id FROM public.members m WHERE m.principal_id = $1"
        "  AND m.deleted_at IS NULL AND m.role IN ('owner', 'admin'))) ORDER BY k.created_at",
        principal.id,
    )
    return {"data": [row_json(r) for r in rows]}


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_api_key(body: ApiKeyCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    key_id = body.id or uuid.uuid4()
    key = new_api_key(key_id)
    expires = datetime.now(UTC) + timedelta(seconds=body.ttl_s) if body.ttl_s else None
    async with write_transaction(gateway, principal) as tx:
        if body.agent_id is not None:
            agent = await load_live(tx.conn, "agents", body.agent_id, lock=False)
            if agent is None:
                raise not_found("agent")
            await require(tx.conn, principal, agent["house_id"], "admin", "api_key.create", f"agent:{body.agent_id}")
            owner, kind, house_id = body.agent_id, "agent", agent["house_id"]
        else:
            if await principal_kind(tx.conn, principal.id) == "agent":
                raise Refused(None, "api_key.create", "agents_cannot_create_keys", 403)
            owner, kind, house_id = principal.id, "user", None
        row = await insert_row(tx.conn, "api_keys", {
            "id": key_id, "principal_id": owner, "principal_kind": kind, "house_id": house_id, "name": body.name,
            "key_hash": secret_hash(key), "created_by": principal.id, "expires_at": expires,
        })
        tx.record("api_key.create", house_id, f"api_key:{key_id}", principal_id=str(owner), kind=kind)
        txid = await current_txid(tx.conn)
    # The key is in this answer only.
    return {"data": {**row_json(row, HIDDEN), "key": key}, "txid": txid}


@router.delete("/{key_id}", response_model=WriteResult)
async def revoke_api_key(key_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row = await load_live(tx.conn, "api_keys", key_id)
        if row is None:
            raise not_found("api key")
        subject = f"api_key:{key_id}"
        allowed = principal.id in (row["principal_id"], row["created_by"])
        if not allowed and row["house_id"] is not None:
            mine = await membership(tx.conn, principal.id, row["house_id"])
            allowed = mine is not None and mine.at_least("admin")
        if not allowed:
            raise Refused(row["house_id"], "api_key.delete", "not_owner_or_admin", 404, subject)
        row = await soft_delete(tx.conn, "api_keys", key_id)
        tx.record("api_key.delete", row["house_id"], subject)
        return await written(tx, row_json(row, HIDDEN))


