"""Environments of a house (e.g. dev, prod): configs, secrets and agents may be scoped to one. Admins manage."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import (
    delete_for_role,
    insert_row,
    load_for_role,
    row_json,
    update_row,
    written,
)
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import error_responses
from appliance.gateway.domain.access import require, write_transaction
from appliance.gateway.domain.models import EnvironmentCreate, EnvironmentUpdate, WriteResult

router = APIRouter(prefix="/api/environments", tags=["environments"],
                   responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_environment(body: EnvironmentCreate, principal: CurrentPrincipal, gateway: GatewayDep
                             ) -> dict[str, Any]:
    environment_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "admin", "environment.create", f"house:{body.house_id}")
        row = await insert_row(tx.conn, "environments", {
            "id": environment_id, "house_id": body.house_id, "name": body.name, "description": body.description,
            "created_by": principal.id,
        })
        tx.record("environment.create", body.house_id, f"environment:{environment_id}", name=body.name)
        return await written(tx, row_json(row))


@router.patch("/{environment_id}", response_model=WriteResult, responses=error_responses(409))
async def update_environment(environment_id: uuid.UUID, body: EnvironmentUpdate, principal: CurrentPrincipal,
                             gateway: GatewayDep) -> dict[str, Any]:
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "environments", environment_id, "admin",
                                              "environment.update")
        if changes:
            row = await update_row(tx.conn, "environments", environment_id, changes)
        tx.record("environment.update", row["house_id"], subject, fields=sorted(changes))
        return await written(tx, row_json(row))


@router.delete("/{environment_id}", response_model=WriteResult)
async def delete_environment(environment_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep
                             ) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        return await delete_for_role(tx, "environments", environment_id, "admin")
