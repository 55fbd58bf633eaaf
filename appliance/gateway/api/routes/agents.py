"""Agents: principals of their house (a member row is made with them), woken by `@name` mentions. Admins manage.

Deleting an agent also ends its membership and revokes its API keys, so its tokens stop working at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import (
    environment_in_house,
    insert_row,
    load_for_role,
    row_json,
    soft_delete,
    update_row,
    written,
)
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.db import affected
from appliance.gateway.core.errors import ApiError, error_responses
from appliance.gateway.domain.access import require, write_transaction
from appliance.gateway.domain.models import AgentCreate, AgentUpdate, WriteResult

router = APIRouter(prefix="/api/agents", tags=["agents"], responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_agent(body: AgentCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    agent_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "admin", "agent.create", f"house:{body.house_id}")
        await environment_in_house(tx.conn, body.environment_id, body.house_id)
        # An agent is a principal: its (client-chosen) id must not be anyone's already.
        taken = await tx.conn.fetchval(
            "SELECT 1 FROM public.members WHERE principal_id = $1 UNION ALL "
            "SELECT 1 FROM public.api_keys WHERE principal_id = $1 LIMIT 1", agent_id
        )
        if taken:
            raise ApiError(409, "already_exists", "this id is already a principal's")
        row = await insert_row(tx.conn, "agents", {
            "id": agent_id, "house_id": body.house_id, "name": body.name, "handler": body.handler,
            "environment_id": body.environment_id, "config": body.config, "created_by": principal.id,
        })
        await insert_row(tx.conn, "members", {
            "id": uuid.uuid4(), "house_id": body.house_id, "principal_id": agent_id, "principal_kind": "agent",
            "role": "member", "created_by": principal.id,
        })
        tx.record("agent.create", body.house_id, f"agent:{agent_id}", name=body.name, handler=body.handler)
        return await written(tx, row_json(row))


@router.patch("/{agent_id}", response_model=WriteResult, responses=error_responses(409))
async def update_agent(agent_id: uuid.UUID, body: AgentUpdate, principal: CurrentPrincipal,
                       gateway: GatewayDep) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    # An explicit null unsets the environment; null for the other fields means "unchanged".
    changes = {k: v for k, v in changes.items() if v is not None or k == "environment_id"}
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "agents", agent_id, "admin", "agent.update")
        if changes.get("environment_id") is not None:
            await environment_in_house(tx.conn, changes["environment_id"], row["house_id"])
        if changes:
            row = await update_row(tx.conn, "agents", agent_id, changes)
        tx.record("agent.update", row["house_id"], subject, fields=sorted(changes))
        return await written(tx, row_json(row))


@router.delete("/{agent_id}", response_model=WriteResult)
async def delete_agent(agent_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "agents", agent_id, "admin", "agent.delete")
        row = await soft_delete(tx.conn, "agents", agent_id)
        await tx.conn.execute(
            "UPDATE public.members SET deleted_at = now(), updated_at = now() "
            "WHERE principal_id = $1 AND deleted_at IS NULL",
            agent_id,
        )
        revoked = await tx.conn.execute(
            "UPDATE public.api_keys SET deleted_at = now() WHERE principal_id = $1 AND deleted_at IS NULL",
            agent_id,
        )
        tx.record("agent.delete", row["house_id"], subject, api_keys_revoked=affected(revoked))
        return await written(tx, row_json(row))
