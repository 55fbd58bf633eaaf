"""Liveness (/healthz: the process answers) and readiness (/readyz: Postgres, sync and streams reachable)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from appliance.gateway.api.deps import GatewayDep
from appliance.gateway.upstream import UpstreamError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _postgres(gateway: Any) -> bool:
    try:
        row = await asyncio.wait_for(gateway.db.fetchrow("SELECT 1 AS ok"), 3)
    except Exception:
        return False
    return row is not None


async def _sync(gateway: Any) -> bool:
    try:
        response = await gateway.sync.request("GET", "/v1/health", read_timeout=3)
        await response.read()
    except UpstreamError:
        return False
    return True  # any HTTP answer: the engine is up (it may still be catching up, which shapes handle)


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
async def readyz(gateway: GatewayDep) -> JSONResponse:
    postgres, sync, streams = await asyncio.gather(_postgres(gateway), _sync(gateway), gateway.streams.reachable())
    checks = {"postgres": postgres, "sync": sync, "streams": streams}
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = ", ".join(name for name, ok in checks.items() if not ok)
    return JSONResponse({"error": {"code": "not_ready", "message": f"unreachable: {down}"}, "checks": checks},
                        status_code=503)
