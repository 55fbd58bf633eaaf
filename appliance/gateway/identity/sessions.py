"""Login sessions: a rotating refresh token per browser login (`appliance.auth_sessions`).

The token (`rt_<session id hex>_<256 random bits>`) lives only in the browser's HttpOnly cookie; the database
keeps its SHA-256. Every refresh replaces it. A token presented again after it was replaced means two parties
hold it (a stolen cookie, a replay): the whole session ends at once, and both are logged out. A disabled person's
sessions are refused (and ended) at their next refresh.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from appliance.gateway.core.db import Connection
from appliance.gateway.domain.access import fetch_one

_TOKEN: Final = re.compile(r"^rt_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


class SessionRefused(Exception):
    def __init__(self, reason: str, session_id: uuid.UUID | None = None,
                 principal_id: uuid.UUID | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.session_id = session_id
        self.principal_id = principal_id


@dataclass(frozen=True)
class Session:
    id: uuid.UUID
    principal_id: uuid.UUID
    issuer: str
    token: str


def _new_token(session_id: uuid.UUID) -> str:
    return f"rt_{session_id.hex}_{secrets.token_urlsafe(32)}"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse(token: str | None) -> uuid.UUID | None:
    match = _TOKEN.match(token or "")
    return uuid.UUID(match.group(1)) if match else None


async def create(conn: Connection, principal_id: uuid.UUID, issuer: str, ttl_s: int) -> Session:
    session_id = uuid.uuid4()
    token = _new_token(session_id)
    await conn.execute(
        "INSERT INTO appliance.auth_sessions (id, principal_id, issuer, current_hash, expires_at) "
        "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        session_id, principal_id, issuer, _hash(token), float(ttl_s))
    return Session(session_id, principal_id, issuer, token)


async def rotate(conn: Connection, token: str | None) -> Session:
    """The session's next token, or SessionRefused (reuse ends the session). Call inside a transaction."""
    session_id = parse(token)
    if session_id is None or token is None:
        raise SessionRefused("malformed")
    row = await fetch_one(
        conn, "SELECT s.principal_id, s.issuer, s.current_hash, s.previous_hash, s.revoked_at IS NOT NULL AS revoked, "
              "s.expires_at <= now() AS expired, u.disabled FROM appliance.auth_sessions s "
              "JOIN public.users u USING (principal_id) WHERE s.id = $1 FOR UPDATE OF s", session_id)
    if row is None:
        raise SessionRefused("unknown")
    principal = row["principal_id"]
    if row["revoked"]:
        raise SessionRefused("revoked", session_id, principal)
    if row["expired"]:
        raise SessionRefused("expired", session_id, principal)
    presented = _hash(token)
    if presented != bytes(row["current_hash"]):
        # A token of this session that is not its current one was replaced already: someone else has it.
        await _revoke(conn, session_id, "reuse_detected")
        raise SessionRefused("reuse_detected", session_id, principal)
    if row["disabled"]:
        await _revoke(conn, session_id, "user_disabled")
        raise SessionRefused("user_disabled", session_id, principal)
    fresh = _new_token(session_id)
    await conn.execute(
        "UPDATE appliance.auth_sessions SET previous_hash = current_hash, current_hash = $1, "
        "generation = generation + 1, refreshed_at = now() WHERE id = $2", _hash(fresh), session_id)
    return Session(session_id, principal, row["issuer"], fresh)


async def end(conn: Connection, token: str | None) -> Session | None:
    """Log out: the session of a token that is (or was) one of its tokens ends; the session, or None."""
    session_id = parse(token)
    if session_id is None or token is None:
        return None
    row = await fetch_one(
        conn, "SELECT principal_id, issuer, current_hash, previous_hash FROM appliance.auth_sessions "
              "WHERE id = $1 AND revoked_at IS NULL", session_id)
    if row is None or _hash(token) not in (bytes(row["current_hash"]), bytes(row["previous_hash"] or b"")):
        return None
    await _revoke(conn, session_id, "logout")
    return Session(session_id, row["principal_id"], row["issuer"], "")


async def _revoke(conn: Connection, session_id: uuid.UUID, why: str) -> None:
    await conn.execute(
        "UPDATE appliance.auth_sessions SET revoked_at = now(), revoked_why = $1 WHERE id = $2 AND revoked_at IS NULL",
        why, session_id)
