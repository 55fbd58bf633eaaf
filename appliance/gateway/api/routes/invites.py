"""Invites: an admin creates a one-time code (shown once, stored hashed) that makes its holder a member."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import (
    insert_row,
    load_for_role,
    load_live,
    principal_kind,
    row_json,
    soft_delete,
    written,
)
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import ApiError, error_responses
from appliance.gateway.core.security import hash_matches, new_invite_code, parse_invite_code, secret_hash
from appliance.gateway.domain.access import current_txid, require, write_transaction
from appliance.gateway.domain.models import InviteAccept, InviteCreate, WriteResult

router = APIRouter(prefix="/api/invites", tags=["invites"], responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_invite(body: InviteCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    invite_id = body.id or uuid.uuid4()
    code = new_invite_code(invite_id)
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "admin", "invite.create", f"house:{body.house_id}")
        row = await insert_row(tx.conn, "invites", {
            "id": invite_id, "house_id": body.house_id, "role": body.role, "code_hash": secret_hash(code),
            "created_by": principal.id, "expires_at": datetime.now(UTC) + timedelta(seconds=body.ttl_s),
        })
        tx.record("invite.create", body.house_id, f"invite:{invite_id}", role=body.role)
        txid = await current_txid(tx.conn)
    # The code is in this answer only; the database keeps its hash.
    return {"data": {**row_json(row), "code": code}, "txid": txid}


@router.post("/accept", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def accept_invite(body: InviteAccept, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    invite_id = parse_invite_code(body.code)
    if invite_id is None:
        raise ApiError(404, "invalid_invite", "unknown, used or expired invite")
    async with write_transaction(gateway, principal) as tx:
        row = await load_live(tx.conn, "invites", invite_id)
        if (row is None or not hash_matches(body.code, row["code_hash"]) or row["accepted_at"] is not None
                or row["expires_at"] <= datetime.now(UTC)):
            raise ApiError(404, "invalid_invite", "unknown, used or expired invite")
        if await principal_kind(tx.conn, principal.id) == "agent":
            raise ApiError(403, "forbidden", "agents cannot accept invites")
        house_id = row["house_id"]
        house_live = await tx.conn.fetchval(
            "SELECT 1 FROM public.houses WHERE id = $1 AND deleted_at IS NULL", house_id
        )
        if house_live is None:
            raise ApiError(404, "invalid_invite", "unknown, used or expired invite")
        already = await tx.conn.fetchval(
            "SELECT 1 FROM public.members WHERE house_id = $1 AND principal_id = $2 AND deleted_at IS NULL",
            house_id, principal.id,
        )
        if already:
            raise ApiError(409, "already_member", "you are already a member of this house")
        await tx.conn.execute(
            "UPDATE public.invites SET accepted_by = $1, accepted_at = now() WHERE id = $2", principal.id, invite_id
        )
        member = await insert_row(tx.conn, "members", {
            "id": uuid.uuid4(), "house_id": house_id, "principal_id": principal.id, "principal_kind": "user",
            "role": row["role"], "created_by": row["created_by"],
        })
        tx.record("invite.accept", house_id, f"invite:{invite_id}", role=row["role"])
        return await written(tx, row_json(member))


@router.delete("/{invite_id}", response_model=WriteResult)
async def revoke_invite(invite_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "invites", invite_id, "admin", "invite.delete")
        row = await soft_delete(tx.conn, "invites", invite_id)
        tx.record("invite.delete", row["house_id"], subject)
        return await written(tx, row_json(row))

