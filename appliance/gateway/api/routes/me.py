"""GET /api/me: who the token says you are, and your houses with your role in each."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from appliance.gateway.api.crud import to_json
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import error_responses
from appliance.gateway.domain.models import Me

router = APIRouter(prefix="/api", tags=["me"], responses=error_responses(401, 429))


@router.get("/me", response_model=Me)
async def me(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    rows = await gateway.db.fetchall(
        "SELECT m.house_id, m.role, m.principal_kind, h.name FROM public.members m "
        "JOIN public.houses h ON h.id = m.house_id AND h.deleted_at IS NULL "
        "WHERE m.principal_id = $1 AND m.deleted_at IS NULL ORDER BY h.name, m.house_id",
        principal.id,
    )
    kind = rows[0]["principal_kind"] if rows else "user"
    return {
        "principal_id": principal.id,
        "principal_kind": kind,
        "houses": [{"house_id": to_json(r["house_id"]), "name": r["name"], "role": r["role"]} for r in rows],
    }
