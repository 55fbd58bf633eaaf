"""GET (and POST, for subsets) /api/shapes/{table}: the Electric HTTP Shape API, scoped to the caller's houses.

The gateway decides the shape: the table (from the path, synced tables only), its columns, the WHERE
`house_id IN ($1, ..., $n) AND deleted_at IS NULL` over the caller's houses (sorted, so one membership set is
one shape; a membership change is a new shape and a full re-sync, which is correct), and the sync secret.
The client only drives the protocol: offset, handle, live, cursor, log, live_sse (or its older name
experimental_live_sse), expired_handle, cache-buster, and the subset parameters of a subset snapshot
(`subset__*`, or a POST body; see SUBSET_PARAMS). A client that tries to set where, params, table, columns
or a secret is refused (400) - the request is an attack or a misconfigured client, either way not served; any
other parameter is dropped. Responses stream through unbuffered with status and electric-* / cache headers.
"""

from __future__ import annotations

import functools
import re
import uuid
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from appliance.audit.chain import AuditEvent
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import ApiError, error_responses
from appliance.gateway.domain.access import Principal
from appliance.gateway.proxy import forwarded_headers, proxy_get
from appliance.gateway.runtime import Gateway
from appliance.tenantdb.schema import SYNCED_TABLES

router = APIRouter(prefix="/api/shapes", tags=["shapes"])

PROTOCOL_PARAMS = frozenset({
    "offset", "handle", "live", "cursor", "log", "live_sse", "experimental_live_sse", "expired_handle",
    "cache-buster",
})
# Parameters that define a shape or authenticate to the sync engine: the gateway's alone.
RESERVED = re.compile(r"^(where|table|columns|secret|api_secret|params(\[.*\])?|replica|source_id|source_secret)$",
                      re.IGNORECASE)
MAX_PARAM_LENGTH = 256
# Subset snapshots (the client's requestSnapshot/fetchSnapshot): forwarded as they are, because the sync engine
# applies a subset *within* the shape the gateway defined (its WHERE ANDed with the gateway's, its columns and
# ORDER BY limited to the shape's columns), so a subset can narrow what the caller may read, never widen it.
SUBSET_PARAMS = frozenset({"subset__where", "subset__params", "subset__order_by", "subset__limit",
                           "subset__offset"})
MAX_SUBSET_PARAM_LENGTH = 8192  # the engine's own bound on a where-clause


def shape_where(houses: list[uuid.UUID]) -> tuple[str, list[tuple[str, str]]]:
    """The WHERE and its params for a caller in `houses` (sorted). No houses: a WHERE no row satisfies."""
    if not houses:
        return "house_id IS NULL", []
    placeholders = ", ".join(f"${i}" for i in range(1, len(houses) + 1))
    params = [(f"params[{i}]", str(house)) for i, house in enumerate(sorted(houses, key=str), start=1)]
    return f"house_id IN ({placeholders}) AND deleted_at IS NULL", params


@functools.lru_cache(maxsize=4096)
def shape_query(table: str, houses: tuple[uuid.UUID, ...], secret: str) -> str:
    """The engine's query string for the gateway's part of a shape (table, columns, WHERE and its params, secret),
    encoded once per table and house set: a live client asks for the same shape every few seconds."""
    where, where_params = shape_where(list(houses))
    return urlencode([("table", table), ("columns", ",".join(SYNCED_TABLES[table])), ("where", where),
                      *where_params, ("secret", secret)])


def client_params(request: Request) -> list[tuple[str, str]]:
    seen: set[str] = set()
    forwarded: list[tuple[str, str]] = []
    for name, value in request.query_params.multi_items():
        if RESERVED.match(name):
            raise ApiError(400, "param_not_allowed", f"the gateway sets {name!r}; it cannot be given")
        if name not in PROTOCOL_PARAMS and name not in SUBSET_PARAMS:
            continue
        if name in seen:
            raise ApiError(400, "bad_request", f"{name!r} given twice")
        limit = MAX_SUBSET_PARAM_LENGTH if name in SUBSET_PARAMS else MAX_PARAM_LENGTH
        if len(value) > limit or "\x00" in value:
            raise ApiError(400, "bad_request", f"{name!r} is malformed")
        seen.add(name)
        forwarded.append((name, value))
    return forwarded


@router.get("/{table}", response_class=Response,
            responses={200: {"description": "shape log entries (JSON array), an SSE stream, or a subset snapshot",
                             "content": {"application/json": {}, "text/event-stream": {}}},
                       **error_responses(400, 401, 404, 409, 429, 503, 504)})
async def get_shape(table: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    return await get_shape_for(table, request, principal, gateway)


async def get_shape_for(table: str, request: Request, principal: Principal, gateway: Gateway) -> Response:
    """A shape GET for an authenticated caller (the route's and the hot path's)."""
    return await _shape(table, request, principal, gateway, None)


@router.post("/{table}", response_class=Response,
             responses={200: {"description": "a subset snapshot: {metadata, data}",
                              "content": {"application/json": {}}},
                        **error_responses(400, 401, 404, 409, 413, 429, 503, 504)})
async def post_shape(table: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """A subset snapshot whose parameters are in a JSON body (the client's `subsetMethod: 'POST'`). The body
    is passed to the engine as it is: only subset fields mean anything there, and the shape itself (table,
    where, columns, secret) comes from the gateway's query string, which the engine never takes from a body."""
    return await _shape(table, request, principal, gateway, await request.body())


async def _shape(table: str, request: Request, principal: Principal, gateway: Gateway,
                 body: bytes | None) -> Response:
    if table not in SYNCED_TABLES:
        raise ApiError(404, "unknown_table", "no such shape table")
    protocol = client_params(request)
    houses = sorted(await gateway.access.roles(principal.id))
    await gateway.audit.granted(AuditEvent(principal.actor, "auth.granted", None, f"shape:{table}",
                                        {"access": "shape.read", "houses": [str(h) for h in houses]}))
    query = shape_query(table, tuple(houses), gateway.sync_secret())
    if protocol:
        query += "&" + urlencode(protocol)
    live = dict(protocol)
    sse = live.get("live_sse") == "true" or live.get("experimental_live_sse") == "true"
    if sse:
        read_timeout = None
    elif live.get("live") == "true":
        read_timeout = gateway.settings.sync_long_poll_s + 15
    else:
        read_timeout = 60.0
    headers = forwarded_headers(request.headers)
    if body is not None:
        headers["content-type"] = "application/json"
    return await proxy_get(gateway.sync, "/v1/shape", query, headers, read_timeout, "sync service",
                           open_ended=sse and body is None, method="GET" if body is None else "POST", body=body)
