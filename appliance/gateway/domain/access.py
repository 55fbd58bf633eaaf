"""Who may do what in which house: membership lookups, role checks, and refusals that are audited.

A principal that is not a member of a house is told "not found" (404) about anything in it, so ids of other
houses' objects reveal nothing; a member whose role is too low is told "forbidden" (403). Every refusal is an
`auth.refused` audit event naming the house (when known), what was attempted and why.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.audit.chain import AuditEvent, append_events_async
from appliance.gateway.core.db import Connection, Database, Record
from appliance.gateway.core.errors import ApiError
from appliance.gateway.domain.access_cache import CHANGED_HERE_SQL, AccessCache
from appliance.gateway.domain.auditlog import AuditLog
from appliance.tenantdb.schema import ROLE_RANK


@dataclass(frozen=True)
class Principal:
    id: uuid.UUID
    client: str
    api_key_id: uuid.UUID | None = None

    @property
    def actor(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Membership:
    house_id: uuid.UUID
    role: str
    principal_kind: str

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class Refused(Exception):
    """Raised inside a transaction; `write_transaction` rolls back, audits the refusal and answers the error."""

    def __init__(self, house_id: uuid.UUID | None, attempted: str, reason: str, status: int = 404,
                 subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.house_id = house_id
        self.attempted = attempted
        self.reason = reason
        self.status = status
        self.subject = subject
        self.detail = detail or {}

    def event(self, principal: Principal) -> AuditEvent:
        return AuditEvent(
            actor=principal.actor, action="auth.refused", house_id=self.house_id, subject=self.subject,
            detail={"attempted": self.attempted, "reason": self.reason, "client": principal.client, **self.detail},
        )

    def api_error(self) -> ApiError:
        if self.status == 403:
            return ApiError(403, "forbidden", "your role in this house does not allow this")
        return ApiError(404, "not_found", "not found")


MEMBERSHIP_SQL = (
    "SELECT m.role, m.principal_kind FROM public.members m "
    "JOIN public.houses h ON h.id = m.house_id AND h.deleted_at IS NULL "
    "WHERE m.principal_id = $1 AND m.house_id = $2 AND m.deleted_at IS NULL"
)


async def membership(conn: Connection, principal_id: uuid.UUID, house_id: uuid.UUID) -> Membership | None:
    row = await conn.fetchrow(MEMBERSHIP_SQL, principal_id, house_id)
    return Membership(house_id, row[0], row[1]) if row else None


async def require(conn: Connection, principal: Principal, house_id: uuid.UUID, role: str,
                  attempted: str, subject: str | None = None) -> Membership:
    """The caller's membership of `house_id` with at least `role`, or Refused (404 non-member, 403 role)."""
    found = await membership(conn, principal.id, house_id)
    if found is None:
        raise Refused(house_id, attempted, "not_a_member", 404, subject)
    if not found.at_least(role):
        raise Refused(house_id, attempted, f"needs_{role}", 403, subject, {"role": found.role})
    return found


async def fetch_one(conn: Connection, query: str, *args: Any) -> Record | None:
    return await conn.fetchrow(query, *args)


async def current_txid(conn: Connection) -> int:
    """The running transaction's id as Electric reports it in change messages (32-bit xid)."""
    return int(await conn.fetchval("SELECT pg_current_xact_id()::xid::text::bigint"))


@dataclass
class WriteContext:
    conn: Connection
    principal: Principal
    audit: AuditLog
    events: list[AuditEvent] = field(default_factory=list)

    def record(self, action: str, house_id: uuid.UUID | None, subject: str, **detail: Any) -> None:
        self.events.append(AuditEvent(self.principal.actor, action, house_id, subject, detail))


class Writer(Protocol):
    db: Database
    audit: AuditLog
    access: AccessCache


@asynccontextmanager
async def write_transaction(writer: Writer, principal: Principal) -> AsyncIterator[WriteContext]:
    """One transaction for a mutation and its audit events (appended last, just before commit). A `Refused`
    raised inside rolls everything back, is audited on its own and becomes the 404/403 answer. A mutation that
    changes who may read what (the triggers that announce it to other processes mark the transaction too) is
    forgotten by this process's access cache before the answer is sent."""
    try:
        async with writer.db.connection() as conn, conn.transaction():
            context = WriteContext(conn, principal, writer.audit)
            yield context
            await append_events_async(conn, context.events)
            changed_access = await conn.fetchval(CHANGED_HERE_SQL)
    except Refused as refused:
        await writer.audit.now(refused.event(principal))
        raise refused.api_error() from None
    if changed_access:
        writer.access.forget_all()
