"""Row helpers the resource routes share: insert with a client-chosen id, update, soft delete, JSON rendering,
and the answer every write gives (`written`; `delete_for_role` for the plain soft delete).

Table and column names come from the routes' own constants, never from requests; values are always parameters.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from appliance.gateway.core.db import Connection, Record
from appliance.gateway.core.errors import ApiError, not_found
from appliance.gateway.domain.access import Membership, Principal, WriteContext, current_txid, require
from appliance.gateway.domain.models import to_json

# jsonb columns: their values go as Python values, which the connection's jsonb codec encodes (core/db.py).
JSON_COLUMNS = frozenset({"config", "value"})


def _ident(name: str) -> str:
    # Names come from the routes' constants; quoted anyway, as psycopg.sql.Identifier did.
    return '"' + name.replace('"', '""') + '"'


# The statements are built once per table and column set and reused as the same string, so each connection
# prepares each of them once (asyncpg's statement cache is keyed by the text).
@functools.lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    placeholders = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    return (f"INSERT INTO public.{_ident(table)} ({', '.join(_ident(c) for c in columns)}) VALUES ({placeholders}) "
            "ON CONFLICT (id) DO NOTHING RETURNING *")


@functools.lru_cache(maxsize=64)
def _load_sql(table: str, lock: bool) -> str:
    return f"SELECT * FROM public.{_ident(table)} WHERE id = $1 AND deleted_at IS NULL{' FOR UPDATE' if lock else ''}"


@functools.lru_cache(maxsize=256)
def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    assignments = [f"{_ident(c)} = ${n}" for n, c in enumerate(columns, start=1)]
    assignments.append("updated_at = now()")
    return f"UPDATE public.{_ident(table)} SET {', '.join(assignments)} WHERE id = ${len(columns) + 1} RETURNING *"


# Tables without an updated_at column (rows that are never edited, only revoked).
_NO_UPDATED_AT = frozenset({"invites", "api_keys"})


@functools.lru_cache(maxsize=64)
def _delete_sql(table: str) -> str:
    touch = "" if table in _NO_UPDATED_AT else ", updated_at = now()"
    return f"UPDATE public.{_ident(table)} SET deleted_at = now(){touch} WHERE id = $1 RETURNING *"


async def insert_row(conn: Connection, table: str, values: dict[str, Any]) -> Record:
    """INSERT with the row's (client-supplied or generated) id; 409 when that id exists."""
    columns = tuple(values)
    row = await conn.fetchrow(_insert_sql(table, columns), *values.values())
    if row is None:
        raise ApiError(409, "already_exists", f"a {table.rstrip('s')} with this id already exists")
    return row


async def load_live(conn: Connection, table: str, row_id: uuid.UUID, *, lock: bool = True) -> Record | None:
    """The live (not deleted) row, locked for the rest of the transaction."""
    return await conn.fetchrow(_load_sql(table, lock), row_id)


async def load_for_role(conn: Connection, principal: Principal, table: str, row_id: uuid.UUID,
                        role: str, attempted: str) -> tuple[Record, str, Membership]:
    """The live row of `table`, locked, once the caller holds at least `role` in its house: (row, its audit
    subject `<kind>:<id>`, the caller's membership). 404 when there is no such row; Refused otherwise."""
    kind = table.rstrip("s")
    row = await load_live(conn, table, row_id)
    if row is None:
        raise not_found(kind)
    subject = f"{kind}:{row_id}"
    return row, subject, await require(conn, principal, row["house_id"], role, attempted, subject)


async def update_row(conn: Connection, table: str, row_id: uuid.UUID, changes: dict[str, Any]) -> Record:
    row = await conn.fetchrow(_update_sql(table, tuple(changes)), *changes.values(), row_id)
    assert row is not None
    return row


async def soft_delete(conn: Connection, table: str, row_id: uuid.UUID) -> Record:
    row = await conn.fetchrow(_delete_sql(table), row_id)
    assert row is not None
    return row


def row_json(row: Record | dict[str, Any], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: to_json(v) for k, v in row.items() if k not in hidden and not isinstance(v, bytes | memoryview)}


async def environment_in_house(conn: Connection, environment_id: uuid.UUID | None, house_id: uuid.UUID) -> None:
    if environment_id is None:
        return
    found = await conn.fetchval(
        "SELECT 1 FROM public.environments WHERE id = $1 AND house_id = $2 AND deleted_at IS NULL",
        environment_id, house_id,
    )
    if found is None:
        raise ApiError(422, "invalid_environment", "environment_id is not an environment of this house")


async def principal_kind(conn: Connection, principal_id: uuid.UUID) -> str:
    """'agent' when the principal is a live agent, else 'user'."""
    found = await conn.fetchval("SELECT 1 FROM public.agents WHERE id = $1 AND deleted_at IS NULL", principal_id)
    return "agent" if found else "user"


async def written(tx: WriteContext, data: dict[str, Any]) -> dict[str, Any]:
    """What every create, update and delete answers: the row as written and the id of the transaction that
    wrote it (a client waits for that txid in its shapes). Called last inside the transaction."""
    return {"data": data, "txid": await current_txid(tx.conn)}


async def delete_for_role(tx: WriteContext, table: str, row_id: uuid.UUID, role: str,
                          detail: Callable[[Record], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The soft delete most resources have: the live row, by a caller with at least `role` in its house, audited
    as `<kind>.delete` (with `detail` from the row) and answered as `written`."""
    action = f"{table.rstrip('s')}.delete"
    _, subject, _ = await load_for_role(tx.conn, tx.principal, table, row_id, role, action)
    row = await soft_delete(tx.conn, table, row_id)
    tx.record(action, row["house_id"], subject, **(detail(row) if detail else {}))
    return await written(tx, row_json(row))
