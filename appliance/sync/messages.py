"""The JSON the Electric clients read: row keys, change and control messages, error bodies.

Every function here is pure and returns either a dict (for messages built from parts) or the exact bytes
served. Byte forms use compact separators and keep non-ASCII as UTF-8, as Electric's encoder does.

Keys are `"<schema>"."<table>"/"<pk value>"/...`: relation parts double `/` and `.`, each key part is quoted
with `/` doubled inside, and a NULL part (possible only for tables without a primary key, where every
column is part of the key) is `_` unquoted.

    >>> build_key("public", "items", {"id": "a/b"}, ("id",))
    '"public"."items"/"a//b"'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring
from typing import Any, Final

Row = Mapping[str, "str | None"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def encode(message: Any) -> bytes:
    """One message (or body) as served."""
    return _dumps(message).encode()


def encode_text(text: str) -> str:
    """A string as `encode` writes it (quoted, escaped, non-ASCII kept), without the encoder's overhead."""
    return encode_basestring(text)


def encode_row(row: Row) -> str:
    """A row (Postgres text values or None) exactly as `encode` writes it, several times faster: rows are
    most of what the engine encodes, once per change and shape."""
    try:
        return "{" + ",".join(
            [encode_basestring(name) + (":null" if value is None else ":" + encode_basestring(value))
             for name, value in row.items()]
        ) + "}"
    except TypeError:  # not text: the general encoder decides
        return _dumps(row)


def relation_prefix(schema: str, table: str) -> str:
    def escape(part: str) -> str:
        return part.replace("/", "//").replace(".", "..")

    return f'"{escape(schema)}"."{escape(table)}"'


def build_key(schema: str, table: str, row: Row, key_columns: Iterable[str], prefix: str | None = None) -> str:
    """The row's key; `key_columns` is the primary key in key order (or every column by name without one)."""
    parts = [prefix if prefix is not None else relation_prefix(schema, table)]
    for column in key_columns:
        value = row.get(column)
        parts.append("/_" if value is None else '/"' + value.replace("/", "//") + '"')
    return "".join(parts)


def join_messages(messages: Iterable[bytes]) -> bytes:
    """A JSON array body from already encoded messages (or comma-joined groups of them)."""
    return b"[" + b",".join(messages) + b"]"


def up_to_date(global_last_seen_lsn: int) -> dict[str, Any]:
    return {"headers": {"control": "up-to-date", "global_last_seen_lsn": str(global_last_seen_lsn)}}


def snapshot_xids(xmin: int, xmax: int, xip_list: Iterable[int]) -> dict[str, Any]:
    """A snapshot's xids as clients read them: strings, not numbers (64-bit xids that JavaScript numbers would
    round)."""
    return {"xmin": str(xmin), "xmax": str(xmax), "xip_list": [str(xid) for xid in xip_list]}


def snapshot_end(xmin: int, xmax: int, xip_list: Iterable[int]) -> dict[str, Any]:
    return {"headers": {"control": "snapshot-end", **snapshot_xids(xmin, xmax, xip_list)}}


MUST_REFETCH: Final = [{"headers": {"control": "must-refetch"}}]
MUST_REFETCH_BODY: Final = encode(MUST_REFETCH)
UNAUTHORIZED_BODY: Final = encode({"message": "Unauthorized - Invalid API secret"})
SHAPE_DEFINITION_MISMATCH: Final = (
    "The specified shape definition and handle do not match. Please ensure the shape definition is correct "
    "or omit the shape handle from the request to obtain a new one."
)


def invalid_request(errors: Mapping[str, Any]) -> bytes:
    """Electric's 400 body: `{"message":"Invalid request","errors":{<param>:[<text>, ...]}}`."""
    return encode({"message": "Invalid request", "errors": dict(errors)})


def error_message(message: str, **extra: Any) -> bytes:
    return encode({"message": message, **extra})
