"""Secrets: values encrypted at rest (AES-256-GCM under the tenant's key) and never returned by the API."""

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
from appliance.gateway.core.security import encrypt_secret
from appliance.gateway.domain.access import require, write_transaction
from appliance.gateway.domain.models import SecretCreate, SecretUpdate, WriteResult

router = APIRouter(prefix="/api/secrets", tags=["secrets"], responses=error_responses(401, 403, 404, 422, 429))


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409))
async def create_secret(body: SecretCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    secret_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "admin", "secret.create", f"house:{body.house_id}")
        await environment_in_house(tx.conn, body.environment_id, body.house_id)
        sealed = encrypt_secret(gateway.encryption_key(), secret_id, body.house_id, body.value)
        row = await insert_row(tx.conn, "secrets", {
            "id": secret_id, "house_id": body.house_id, "environment_id": body.environment_id, "name": body.name,
            "value": sealed, "created_by": principal.id,
        })
        tx.record("secret.create", body.house_id, f"secret:{secret_id}", name=body.name)
        return await written(tx, row_json(row))


@router.patch("/{secret_id}", response_model=WriteResult)
async def update_secret(secret_id: uuid.UUID, body: SecretUpdate, principal: CurrentPrincipal,
                        gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "secrets", secret_id, "admin", "secret.update")
        sealed = encrypt_secret(gateway.encryption_key(), secret_id, row["house_id"], body.value)
        row = await update_row(tx.conn, "secrets", secret_id, {"value": sealed})
        tx.record("secret.update", row["house_id"], subject, name=row["name"])
        return await written(tx, row_json(row))


@router.delete("/{secret_id}", response_model=WriteResult)
async def delete_secret(secret_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        return await delete_for_role(tx, "secrets", secret_id, "admin",
                                     detail=lambda row: {"name": row["name"]})
