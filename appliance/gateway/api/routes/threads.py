"""Threads: metadata in Postgres, transcript in the thread's durable stream (`thread-<id>`).

Members create threads and post entries; the creator or an admin deletes a thread. Reading the stream goes
through the gateway (membership checked, stream server hidden) with the protocol's offset, long-poll and SSE.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from appliance.audit.chain import AuditEvent
from appliance.gateway.api.crud import insert_row, load_for_role, row_json, soft_delete, update_row, written
from appliance.gateway.api.deps import CurrentPrincipal, GatewayDep
from appliance.gateway.core.errors import ApiError, error_responses, not_found
from appliance.gateway.domain.access import Principal, Refused, require, write_transaction
from appliance.gateway.domain.entries import EntryOutcome
from appliance.gateway.domain.models import EntryCreate, EntryResult, ThreadCreate, ThreadUpdate, WriteResult
from appliance.gateway.proxy import forwarded_headers, proxy_get
from appliance.gateway.runtime import Gateway
from appliance.gateway.streams import StreamError, stream_path

router = APIRouter(prefix="/api/threads", tags=["threads"], responses=error_responses(401, 403, 404, 422, 429))

# Offsets are "-1", "now" or "<digits>_<digits>"; cursors are opaque tokens of the server.
OFFSET_PATTERN = r"^(-1|now|[0-9]{1,20}_[0-9]{1,20})$"
CURSOR_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
LIVE_PATTERN = r"^(long-poll|sse)$"


@router.post("", status_code=201, response_model=WriteResult, responses=error_responses(409, 503))
async def create_thread(body: ThreadCreate, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    thread_id = body.id or uuid.uuid4()
    async with write_transaction(gateway, principal) as tx:
        await require(tx.conn, principal, body.house_id, "member", "thread.create", f"house:{body.house_id}")
        row = await insert_row(tx.conn, "threads", {
            "id": thread_id, "house_id": body.house_id, "title": body.title, "created_by": principal.id,
        })
        # The stream is made before the row commits, so a committed thread always has its stream (a crash in
        # between leaves an empty stream nobody can reach; an append would also create it).
        try:
            await gateway.streams.create(thread_id)
        except StreamError:
            raise ApiError(503, "streams_unavailable", "the streams server is unavailable; retry",
                           {"Retry-After": "1"}) from None
        tx.record("thread.create", body.house_id, f"thread:{thread_id}")
        return await written(tx, row_json(row))


@router.patch("/{thread_id}", response_model=WriteResult)
async def update_thread(thread_id: uuid.UUID, body: ThreadUpdate, principal: CurrentPrincipal,
                        gateway: GatewayDep) -> dict[str, Any]:
    changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    async with write_transaction(gateway, principal) as tx:
        row, subject, _ = await load_for_role(tx.conn, principal, "threads", thread_id, "member", "thread.update")
        if changes:
            row = await update_row(tx.conn, "threads", thread_id, changes)
        tx.record("thread.update", row["house_id"], subject, fields=sorted(changes))
        return await written(tx, row_json(row))


@router.delete("/{thread_id}", response_model=WriteResult)
async def delete_thread(thread_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, Any]:
    async with write_transaction(gateway, principal) as tx:
        row, subject, mine = await load_for_role(tx.conn, principal, "threads", thread_id, "member", "thread.delete")
        if row["created_by"] != principal.id and not mine.at_least("admin"):
            raise Refused(row["house_id"], "thread.delete", "needs_admin_or_creator", 403, subject)
        row = await soft_delete(tx.conn, "threads", thread_id)
        tx.record("thread.delete", row["house_id"], subject)
        return await written(tx, row_json(row))


@router.post("/{thread_id}/entries", status_code=201, response_model=EntryResult,
             responses={200: {"model": EntryResult, "description": "a retry: the entry was already stored"},
                        **error_responses(409, 502, 503)})
async def post_entry(thread_id: uuid.UUID, body: EntryCreate, principal: CurrentPrincipal,
                     gateway: GatewayDep) -> Response:
    outcome = await gateway.entries.post(principal, thread_id, body)
    return JSONResponse(entry_answer(outcome), status_code=200 if outcome.duplicate else 201)


def entry_answer(outcome: EntryOutcome) -> dict[str, Any]:
    """The body of an entry's answer (201, or 200 for a retry): the route's and the hot path's."""
    return {"data": outcome.as_json(), "duplicate": outcome.duplicate}


@router.get("/{thread_id}/stream", response_class=Response,
            responses={200: {"description": "the thread's messages as a JSON array, or an SSE stream",
                             "content": {"application/json": {}, "text/event-stream": {}}},
                       204: {"description": "long-poll timed out with no new messages"},
                       **error_responses(503, 504)})
async def read_stream(
    request: Request, thread_id: uuid.UUID, principal: CurrentPrincipal, gateway: GatewayDep,
    offset: Annotated[str, Query(pattern=OFFSET_PATTERN)] = "-1",
    live: Annotated[str | None, Query(pattern=LIVE_PATTERN)] = None,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
) -> Response:
    return await stream_read(gateway, principal, thread_id, offset, live, cursor, request.headers)


async def stream_read(gateway: Gateway, principal: Principal, thread_id: uuid.UUID, offset: str, live: str | None,
                      cursor: str | None, request_headers: Mapping[str, str]) -> Response:
    """A thread stream read for an authenticated caller with valid parameters: membership (404 otherwise, audited),
    the read grant, then the streams server's answer passed through (the route's and the hot path's)."""
    subject = f"thread:{thread_id}"
    house_id = await gateway.access.thread_house(thread_id)
    if house_id is None or house_id not in await gateway.access.roles(principal.id):
        await gateway.audit.now(AuditEvent(principal.actor, "auth.refused", house_id, subject, {
            "attempted": "thread.read", "reason": "not_a_member" if house_id else "no_such_thread",
            "client": principal.client,
        }))
        raise not_found("thread")
    await gateway.audit.granted(AuditEvent(principal.actor, "auth.granted", house_id, subject,
                                           {"access": "thread.read", "live": live or "no"}))
    params = [("offset", offset)]
    if live:
        params.append(("live", live))
    if cursor:
        params.append(("cursor", cursor))
    read_timeout = None if live == "sse" else gateway.settings.streams_long_poll_s + 15
    for attempt in range(2):
        response = await proxy_get(
            gateway.streams.upstream, stream_path(thread_id), params, forwarded_headers(request_headers),
            read_timeout, "streams server", open_ended=live == "sse",
        )
        if response.status_code != 404 or attempt:
            return response
        # A live thread without its stream (e.g. the streams data restored from an older backup): an empty
        # thread, made on first read, rather than the stream server's own 404 page.
        await response.discard()  # drop the 404's upstream connection
        try:
            await gateway.streams.create(thread_id)
        except StreamError:
            raise ApiError(503, "streams_unavailable", "the streams server is unavailable; retry",
                           {"Retry-After": "1"}) from None
    raise AssertionError("unreachable")
