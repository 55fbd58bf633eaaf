"""Houses: any user may create one (and becomes its owner); admins rename it; only owners delete it."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import insert_row, load_live, principal_kind, row_json, soft_delete, update_row, written
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import error_responses, not_found
from appliance.gateway.domain.access import Refused, require, write_transaction
from appliance.gateway.domain.models import HouseCreate, HouseUpdate, WriteResult

router = APIRouter(prefix="/api/houses", tags=["houses"], responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_house(body: HouseCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    house_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        if await principal_kind(tx.conn, principal.id) == "agent":
            raise Refused(None, "house.create", "agents_cannot_create_houses", 403)
        row = await insert_row(tx.conn, "houses", {
            "id": house_id, "house_id": house_id, "name": body.name, "created_by": principal.id,
        })
        await insert_row(tx.conn, "members", {
            "id": uuid.uuid4(), "house_id": house_id, "principal_id": principal.id, "principal_kind": "user",
            "role": "owner", "created_by": principal.id,
        })
        tx.record("house.create", house_id, f"house:{house_id}", name=body.name)
        return await written(tx, row_json(row))


@router.patch("/{house_id}", response_model=WriteResult)
async def update_house(house_id: uuid.UUID, body: HouseUpdate, principal: CurrentPrincipal,
                       gateway: GatewayDep) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, house_id, "admin", "house.update", f"house:{house_id}")
        row = await load_live(tx.conn, "houses", house_id)
        if row is None:
            raise not_found("house")
        if changes:
            row = await update_row(tx.conn, "houses", house_id, changes)
        tx.record("house.update", house_id, f"house:{house_id}", changes=changes)
        return await written(tx, row_json(row))


@router.delete("/{house_id}", response_model=WriteResult)
async def delete_house(house_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, house_id, "owner", "house.delete", f"house:{house_id}")
        row = await soft_delete(tx.conn, "houses", house_id)
        tx.record("house.delete", house_id, f"house:{house_id}")
        return await written(tx, row_json(row))
