"""People from issuers, as the gateway's principals: `(issuer, subject)` -> one principal UUID, created at the
first login with its entry in the users directory; their house roles from claims (`identity.issuers[].roles`).

Everything downstream runs as that principal, exactly as with the tenant's own tokens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from appliance.audit.chain import AuditEvent, append_events_async
from appliance.config import RoleGrant
from appliance.gateway.core.db import Connection, affected
from appliance.gateway.domain.access import fetch_one
from appliance.gateway.identity.issuers import VerifiedToken
from appliance.tenantdb.schema import ROLE_RANK


class Disabled(Exception):
    """The person is disabled in this tenant (public.users.disabled)."""


@dataclass(frozen=True)
class Person:
    principal_id: uuid.UUID
    created: bool
    # The claims added, changed or removed a membership: whoever remembers this principal's access forgets it.
    roles_changed: bool = False


def _text_claim(claims: dict[str, Any], name: str, limit: int) -> str:
    value = claims.get(name)
    return value[:limit] if isinstance(value, str) else ""


async def person_for(conn: Connection, token: VerifiedToken, client: str, *,
                     interactive: bool) -> Person:
    """`_person`, once more if another first login of the same person raced this one."""
    try:
        return await _person(conn, token, client, interactive=interactive)
    except _Retry:
        return await _person(conn, token, client, interactive=interactive)


class _Retry(Exception):
    pass


async def _person(conn: Connection, token: VerifiedToken, client: str, *,
                  interactive: bool) -> Person:
    """The principal of a verified token's person (made at their first login), with their directory entry and
    claimed roles brought up to date, and the changes audited, in one transaction. Disabled if disabled."""
    issuer = token.issuer.issuer
    display_name = _text_claim(token.claims, "name", 200) or _text_claim(token.claims, "preferred_username", 200)
    email = _text_claim(token.claims, "email", 254)
    events: list[AuditEvent] = []
    async with conn.transaction():
        row = await fetch_one(
            conn, "SELECT i.principal_id, u.disabled FROM public.identities i "
                  "JOIN public.users u USING (principal_id) WHERE i.issuer = $1 AND i.subject = $2",
            issuer, token.subject)
        created = False
        if row is None:
            principal = uuid.uuid4()
            await conn.execute(
                "INSERT INTO public.users (principal_id, display_name, email, last_login_at) "
                "VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)", principal, display_name, email, interactive)
            inserted = await conn.execute(
                "INSERT INTO public.identities (issuer, subject, principal_id) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING", issuer, token.subject, principal)
            if affected(inserted) == 0:
                # Another first login of the same person won the race: theirs is the principal.
                raise _Retry()
            created = True
            events.append(AuditEvent(str(principal), "identity.principal_created", None, f"principal:{principal}",
                                     {"issuer": issuer, "subject": token.subject, "client": client}))
        else:
            principal = row["principal_id"]
            if row["disabled"]:
                raise Disabled()
            await conn.execute(
                "UPDATE public.users SET display_name = $1, email = $2, updated_at = now(), "
                "last_login_at = CASE WHEN $3 THEN now() ELSE last_login_at END "
                "WHERE principal_id = $4 AND (display_name <> $1 OR email <> $2 OR $3)",
                display_name, email, interactive, principal)
        role_events = await _apply_roles(conn, principal, token, client)
        events.extend(role_events)
        if events:
            await append_events_async(conn, events)
    return Person(principal, created, bool(role_events))


def _matches(grant: RoleGrant, claims: dict[str, Any]) -> bool:
    value = claims.get(grant.claim)
    if isinstance(value, list):
        return grant.value in [str(v) for v in value]
    return value is not None and str(value) == grant.value


def desired_roles(grants: tuple[RoleGrant, ...], claims: dict[str, Any]) -> dict[uuid.UUID, str | None]:
    """For each house the issuer's claims manage: the highest role the claims give (None: no membership)."""
    desired: dict[uuid.UUID, str | None] = {uuid.UUID(g.house): None for g in grants}
    for grant in grants:
        if _matches(grant, claims):
            house = uuid.UUID(grant.house)
            current = desired[house]
            if current is None or ROLE_RANK[grant.role] > ROLE_RANK[current]:
                desired[house] = grant.role
    return desired


async def _apply_roles(conn: Connection, principal: uuid.UUID, token: VerifiedToken,
                       client: str) -> list[AuditEvent]:
    """Memberships in the houses the issuer's claims manage, made to match the claims (added, re-roled, removed).
    A house named by the settings that does not exist (or was deleted) is skipped."""
    desired = desired_roles(token.issuer.roles, token.claims)
    if not desired:
        return []
    houses = list(desired)
    live = {r[0] for r in await conn.fetch(
        "SELECT id FROM public.houses WHERE id = ANY($1) AND deleted_at IS NULL", houses)}
    current = {r[1]: (r[0], r[2]) for r in await conn.fetch(
        "SELECT id, house_id, role FROM public.members WHERE principal_id = $1 AND house_id = ANY($2) "
        "AND deleted_at IS NULL FOR UPDATE", principal, houses)}
    events = []
    actor = str(principal)
    detail = {"issuer": token.issuer.issuer, "client": client, "by": "claims"}
    for house, role in desired.items():
        if house not in live:
            continue
        existing = current.get(house)
        if role is not None and existing is None:
            await conn.execute(
                "INSERT INTO public.members (id, house_id, principal_id, principal_kind, role, created_by) "
                "VALUES ($1, $2, $3, 'user', $4, $5)", uuid.uuid4(), house, principal, role, principal)
            events.append(AuditEvent(actor, "member.create", house, f"principal:{principal}", {**detail, "role": role}))
        elif role is not None and existing is not None and existing[1] != role:
            await conn.execute("UPDATE public.members SET role = $1, updated_at = now() WHERE id = $2",
                               role, existing[0])
            events.append(AuditEvent(actor, "member.update", house, f"principal:{principal}",
                                     {**detail, "role": role, "was": existing[1]}))
        elif role is None and existing is not None:
            await conn.execute("UPDATE public.members SET deleted_at = now(), updated_at = now() WHERE id = $1",
                               existing[0])
            events.append(AuditEvent(actor, "member.delete", house, f"principal:{principal}",
                                     {**detail, "was": existing[1]}))
    return events
