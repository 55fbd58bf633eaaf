"""Configs: JSON values by key, house-wide or for one environment (synced; never secret - see secrets)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import (
    delete_for_role,
    environment_in_house,
    insert_row,
    load_for_role,
    row_json,
    update_row,
    written,
)
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import error_responses
from appliance.gateway.domain.access import require, write_transaction
from appliance.gateway.domain.models import ConfigCreate, ConfigUpdate, WriteResult

router = APIRouter(prefix="/api/configs", tags=["configs"], responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_config(body: ConfigCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    config_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "admin", "config.create", f"house:{body.house_id}")
        await environment_in_house(tx.conn, body.environment_id, body.house_id)
        row = await insert_row(tx.conn, "configs", {
            "id": config_id, "house_id": body.house_id, "environment_id": body.environment_id, "key": body.key,
            "value": body.value, "created_by": principal.id,
        })
        # Values are not copied into the audit trail (they may be large, and need not be integers).
        tx.record("config.create", body.house_id, f"config:{config_id}", key=body.key,
                  environment_id=None if body.environment_id is None else str(body.environment_id))
        return await written(tx, row_json(row))


@router.patch("/{config_id}", response_model=WriteResult)
async def update_config(config_id: uuid.UUID, body: ConfigUpdate, principal: CurrentPrincipal,
                        gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "configs", config_id, "admin", "config.update")
        row = await update_row(tx.conn, "configs", config_id, {"value": body.value})
        tx.record("config.update", row["house_id"], subject, key=row["key"])
        return await written(tx, row_json(row))


@router.delete("/{config_id}", response_model=WriteResult)
async def delete_config(config_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        return await delete_for_role(tx, "configs", config_id, "admin",
                                     detail=lambda row: {"key": row["key"]})
