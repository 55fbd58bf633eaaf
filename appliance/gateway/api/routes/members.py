"""Members: who belongs to a house, with which role.

Admins add, change and remove members and admins; only owners grant, change or remove the owner role; anyone
may leave; a house always keeps at least one owner.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import insert_row, load_live, principal_kind, row_json, soft_delete, update_row, written
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import ApiError, error_responses, not_found
from appliance.gateway.domain.access import Refused, require, write_transaction
from appliance.gateway.domain.models import MemberCreate, MemberUpdate, WriteResult

router = APIRouter(prefix="/api/members", tags=["members"], responses=error_responses(401, 403, 404, 422, 429))


async def _owners_left(conn: Any, house_id: uuid.UUID, without: uuid.UUID) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM public.members WHERE house_id = $1 AND role = 'owner' AND deleted_at IS NULL "
        "AND id <> $2",
        house_id, without,
    )
    return int(count or 0)


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def add_member(body: MemberCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    member_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        mine = await require(tx.conn, principal, body.house_id, "admin", "member.create", f"house:{body.house_id}")
        if body.role == "owner" and not mine.at_least("owner"):
            raise Refused(body.house_id, "member.create", "needs_owner", 403, f"principal:{body.principal_id}")
        kind = await principal_kind(tx.conn, body.principal_id)
        if kind == "agent":
            agent_house = await tx.conn.fetchval("SELECT house_id FROM public.agents WHERE id = $1",
                                                 body.principal_id)
            if agent_house is None or agent_house != body.house_id:
                raise ApiError(422, "invalid_principal", "an agent can only be a member of its own house")
        already = await tx.conn.fetchval(
            "SELECT 1 FROM public.members WHERE house_id = $1 AND principal_id = $2 AND deleted_at IS NULL",
            body.house_id, body.principal_id,
        )
        if already:
            raise ApiError(409, "already_member", "this principal is already a member of the house")
        row = await insert_row(tx.conn, "members", {
            "id": member_id, "house_id": body.house_id, "principal_id": body.principal_id, "principal_kind": kind,
            "role": body.role, "created_by": principal.id,
        })
        tx.record("member.create", body.house_id, f"principal:{body.principal_id}", role=body.role,
                  member_id=str(member_id))
        return await written(tx, row_json(row))


@router.patch("/{member_id}", response_model=WriteResult, responses=error_responses(409))
async def change_role(member_id: uuid.UUID, body: MemberUpdate, principal: CurrentPrincipal,
                      gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row = await load_live(tx.conn, "members", member_id)
        if row is None:
            raise not_found("member")
        house_id = row["house_id"]
        subject = f"principal:{row['principal_id']}"
        mine = await require(tx.conn, principal, house_id, "admin", "member.update", subject)
        if (body.role == "owner" or row["role"] == "owner") and not mine.at_least("owner"):
            raise Refused(house_id, "member.update", "needs_owner", 403, subject)
        if row["role"] == "owner" and body.role != "owner" and await _owners_left(tx.conn, house_id, member_id) == 0:
            raise ApiError(409, "last_owner", "a house needs at least one owner")
        if row["principal_kind"] == "agent" and body.role == "owner":
            raise ApiError(422, "invalid_role", "agents cannot own houses")
        row = await update_row(tx.conn, "members", member_id, {"role": body.role})
        tx.record("member.update", house_id, subject, role=body.role, member_id=str(member_id))
        return await written(tx, row_json(row))


@router.delete("/{member_id}", response_model=WriteResult, responses=error_responses(409))
async def remove_member(member_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row = await load_live(tx.conn, "members", member_id)
        if row is None:
            raise not_found("member")
        house_id = row["house_id"]
        subject = f"principal:{row['principal_id']}"
        leaving = row["principal_id"] == principal.id
        mine = await require(tx.conn, principal, house_id, "member" if leaving else "admin", "member.delete", subject)
        if row["role"] == "owner" and not leaving and not mine.at_least("owner"):
            raise Refused(house_id, "member.delete", "needs_owner", 403, subject)
        if row["role"] == "owner" and await _owners_left(tx.conn, house_id, member_id) == 0:
            raise ApiError(409, "last_owner", "a house needs at least one owner")
        row = await soft_delete(tx.conn, "members", member_id)
        tx.record("member.delete", house_id, subject, member_id=str(member_id))
        return await written(tx, row_json(row))
