"""Subset snapshots: a one-off query of some of a shape's rows, as Electric's `requestSnapshot`/`fetchSnapshot`.

A subset request is an ordinary shape request (`GET /v1/shape?table=...&offset=...&handle=...`) that also
carries subset parameters, either in the query string (`subset__where`, `subset__params` (a JSON object),
`subset__order_by`, `subset__limit`, `subset__offset`) or, for `POST /v1/shape`, in a JSON body (the same
names without the prefix, at the top level or under `"subset"`). The answer is not the shape's log but
`{"metadata": {...}, "data": [<insert messages>]}` from one REPEATABLE READ snapshot (see snapshot.py).

The subset narrows the shape and never widens it: its WHERE is ANDed with the shape's own, its rows carry the
shape's selected columns only, and its WHERE and ORDER BY may only name those selected columns (Electric
allows any column of the table; a proxy that hides a column from a shape must not have it probed through
a subset filter, so this engine is stricter). Errors are Electric's: `{"errors": {"subset": {<key>: [...]}}}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from psycopg import sql

from appliance.sync.pgparse import SortKey, SyntaxRefused, parse_order_by
from appliance.sync.shape import CompiledShape
from appliance.sync.where import BoundWhere, WhereError, compile_where

QUERY_PREFIX: Final = "subset__"
KEYS: Final = ("where", "params", "order_by", "limit", "offset")
# Sent by the client next to their compiled SQL (structured forms of the same expressions); not needed here.
IGNORED_KEYS: Final = ("where_expr", "order_by_expr")


class SubsetInvalid(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(str(errors))
        self.errors = errors


@dataclass(frozen=True)
class SubsetRequest:
    where: str | None = None
    params: Mapping[int, str] = field(default_factory=dict)
    order_by: str | None = None
    limit: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class BoundSubset:
    """A subset checked against its shape, ready to render as the tail of the shape's snapshot query."""

    where: BoundWhere | None
    order_by: tuple[SortKey, ...]
    limit: int | None
    offset: int | None

    def sql_tail(self, shape_where: sql.Composable | None) -> tuple[sql.Composable, list[object]]:
        """`WHERE <shape> AND (<subset>) ORDER BY ... LIMIT ... OFFSET ...` and the subset's placeholder values."""
        parts: list[sql.Composable] = []
        params: list[object] = []
        if self.where is not None:
            condition, params = self.where.to_sql()
            parts.append(sql.SQL(" AND ({})").format(condition) if shape_where is not None
                         else sql.SQL(" WHERE {}").format(condition))
        if self.order_by:
            keys = [sql.SQL(" ").join([sql.Identifier(key.column),
                                       *(sql.SQL(word) for word in (key.direction, key.nulls) if word)])
                    for key in self.order_by]
            parts.append(sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(keys)))
        if self.limit is not None:
            parts.append(sql.SQL(" LIMIT {}").format(sql.Literal(self.limit)))
        if self.offset is not None:
            parts.append(sql.SQL(" OFFSET {}").format(sql.Literal(self.offset)))
        return sql.Composed(parts), params


def fields_from_query(query: Mapping[str, str]) -> dict[str, Any]:
    """The `subset__*` parameters of a query string, unprefixed."""
    return {key[len(QUERY_PREFIX):]: value for key, value in query.items() if key.startswith(QUERY_PREFIX)}


def fields_from_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A POST body's subset fields: under `"subset"`, or its top-level subset keys (Electric takes both)."""
    nested = body.get("subset")
    if isinstance(nested, dict):
        return dict(nested)
    return {key: body[key] for key in (*KEYS, *IGNORED_KEYS) if key in body}


# Electric's (Ecto's) messages for the two bounds.
_BOUNDS: Final = {"limit": (1, "must be greater than 0"), "offset": (0, "must be greater than or equal to 0")}


def _integer(value: Any, key: str, errors: dict[str, list[str]]) -> int | None:
    if isinstance(value, bool):
        value = None
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int):
        errors.setdefault(key, []).append("is invalid")
        return None
    minimum, message = _BOUNDS[key]
    if value < minimum:
        errors.setdefault(key, []).append(message)
        return None
    return value


def _param_text(value: Any) -> str | None:
    """A parameter as the text Postgres will read: strings as they are (BigInts arrive as strings), JSON
    numbers and booleans in their JSON spelling, which Postgres reads back the same."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def _params(value: Any, errors: dict[str, list[str]]) -> dict[int, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            errors.setdefault("params", []).append("params must be valid JSON")
            return {}
    if not isinstance(value, dict):
        errors.setdefault("params", []).append("params must be a JSON object")
        return {}
    params: dict[int, str] = {}
    for key, item in value.items():
        text = _param_text(item)
        if not (isinstance(key, str) and key.isdigit() and int(key) >= 1) or text is None:
            errors.setdefault("params", []).append(
                f"params must map $1..$n (keys \"1\", \"2\", ...) to strings, numbers or booleans, not {key!r}")
            return {}
        params[int(key)] = text
    if not numbered_without_gaps(params):
        errors.setdefault("params", []).append(NOT_NUMBERED)
    return params


NOT_NUMBERED: Final = "params must be numbered $1..$n without gaps"


def numbered_without_gaps(params: Mapping[int, str]) -> bool:
    """Whether `params` are exactly $1..$n (a shape's and a subset's alike)."""
    return not params or sorted(params) == list(range(1, max(params) + 1))


def parse_subset(fields: Mapping[str, Any]) -> SubsetRequest:
    """Validate the subset fields the way Electric's SubsetParams does; raises SubsetInvalid."""
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(fields) - set(KEYS) - set(IGNORED_KEYS))
    for key in unknown:
        errors.setdefault(key, []).append("is not a subset parameter")
    where, order_by = fields.get("where"), fields.get("order_by")
    for key, value in (("where", where), ("order_by", order_by)):
        if value is not None and not isinstance(value, str):
            errors.setdefault(key, []).append("is invalid")
    limit = _integer(fields["limit"], "limit", errors) if fields.get("limit") is not None else None
    offset = _integer(fields["offset"], "offset", errors) if fields.get("offset") is not None else None
    params = _params(fields["params"], errors) if fields.get("params") is not None else {}
    if (limit is not None or offset is not None) and not order_by:
        errors.setdefault("order_by", []).append("order_by is required when limit or offset is present")
    if errors:
        raise SubsetInvalid(errors)
    return SubsetRequest(where or None, params, order_by or None, limit, offset)


def bind_subset(subset: SubsetRequest, shape: CompiledShape) -> BoundSubset:
    """The subset checked against the shape's selected columns; raises SubsetInvalid."""
    visible = set(shape.columns)
    types = {name: typname for name, typname in shape.table.where_types.items() if name in visible}
    where = None
    if subset.where is not None:
        try:
            where = compile_where(subset.where, types, subset.params)
        except WhereError as exc:
            raise SubsetInvalid({exc.field: [str(exc)]}) from None
    elif subset.params:
        raise SubsetInvalid({"params": ["params given but there is no where"]})
    order: tuple[SortKey, ...] = ()
    if subset.order_by is not None:
        try:
            order = parse_order_by(subset.order_by, visible)
        except (SyntaxRefused, ValueError) as exc:
            raise SubsetInvalid({"order_by": [str(exc)]}) from None
    return BoundSubset(where, order, subset.limit, subset.offset)
