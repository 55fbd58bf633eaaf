"""Row helpers the resource routes share: insert with a client-chosen id, update, soft delete, JSON rendering.

Table and column names come from the routes' own constants, never from requests; values are always parameters.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from appliance.gateway.access import Membership, Principal, require
from appliance.gateway.core.errors import ApiError, not_found

JSON_COLUMNS = frozenset({"config", "value"})


def _adapt(column: str, value: Any) -> Any:
    return Jsonb(value) if column in JSON_COLUMNS and not isinstance(value, bytes) else value


async def insert_row(conn: psycopg.AsyncConnection[Any], table: str, values: dict[str, Any]) -> dict[str, Any]:
    """INSERT with the row's (client-supplied or generated) id; 409 when that id exists."""
    columns = list(values)
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (id) DO NOTHING RETURNING *").format(
        sql.Identifier("public", table),
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [_adapt(c, values[c]) for c in columns])
        row = await cur.fetchone()
    if row is None:
        raise ApiError(409, "already_exists", f"a {table.rstrip('s')} with this id already exists")
    return row


async def load_live(conn: psycopg.AsyncConnection[Any], table: str, row_id: uuid.UUID, *, lock: bool = True
                    ) -> dict[str, Any] | None:
    """The live (not deleted) row, locked for the rest of the transaction."""
    query = sql.SQL("SELECT * FROM {} WHERE id = %s AND deleted_at IS NULL{}").format(
        sql.Identifier("public", table), sql.SQL(" FOR UPDATE") if lock else sql.SQL("")
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (row_id,))
        return await cur.fetchone()


async def load_for_role(conn: psycopg.AsyncConnection[Any], principal: Principal, table: str, row_id: uuid.UUID,
                        role: str, attempted: str) -> tuple[dict[str, Any], str, Membership]:
    """The live row of `table`, locked, once the caller holds at least `role` in its house: (row, its audit
    subject `<kind>:<id>`, the caller's membership). 404 when there is no such row; Refused otherwise."""
    kind = table.rstrip("s")
    row = await load_live(conn, table, row_id)
    if row is None:
        raise not_found(kind)
    subject = f"{kind}:{row_id}"
    return row, subject, await require(conn, principal, row["house_id"], role, attempted, subject)


async def update_row(conn: psycopg.AsyncConnection[Any], table: str, row_id: uuid.UUID, changes: dict[str, Any]
                     ) -> dict[str, Any]:
    assignments: list[sql.Composable] = [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder()) for c in changes
    ]
    assignments.append(sql.SQL("updated_at = now()"))
    query = sql.SQL("UPDATE {} SET {} WHERE id = %s RETURNING *").format(
        sql.Identifier("public", table), sql.SQL(", ").join(assignments)
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*(_adapt(c, v) for c, v in changes.items()), row_id])
        row = await cur.fetchone()
    assert row is not None
    return row


# Tables without an updated_at column (rows that are never edited, only revoked).
_NO_UPDATED_AT = frozenset({"invites", "api_keys"})


async def soft_delete(conn: psycopg.AsyncConnection[Any], table: str, row_id: uuid.UUID) -> dict[str, Any]:
    touch = sql.SQL("") if table in _NO_UPDATED_AT else sql.SQL(", updated_at = now()")
    query = sql.SQL("UPDATE {} SET deleted_at = now(){} WHERE id = %s RETURNING *").format(
        sql.Identifier("public", table), touch
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (row_id,))
        row = await cur.fetchone()
    assert row is not None
    return row


def to_json(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def row_json(row: dict[str, Any], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: to_json(v) for k, v in row.items() if k not in hidden and not isinstance(v, bytes | memoryview)}


async def environment_in_house(conn: psycopg.AsyncConnection[Any], environment_id: uuid.UUID | None,
                               house_id: uuid.UUID) -> None:
    if environment_id is None:
        return
    cur = await conn.execute(
        "SELECT 1 FROM public.environments WHERE id = %s AND house_id = %s AND deleted_at IS NULL",
        (environment_id, house_id),
    )
    if await cur.fetchone() is None:
        raise ApiError(422, "invalid_environment", "environment_id is not an environment of this house")


async def principal_kind(conn: psycopg.AsyncConnection[Any], principal_id: uuid.UUID) -> str:
    """'agent' when the principal is a live agent, else 'user'."""
    cur = await conn.execute("SELECT 1 FROM public.agents WHERE id = %s AND deleted_at IS NULL", (principal_id,))
    return "agent" if await cur.fetchone() else "user"
