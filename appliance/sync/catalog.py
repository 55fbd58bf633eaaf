"""What a shape's table is, read from pg_catalog: columns, types (with array dimensions), primary key.

The HTTP layer turns the `table` parameter into a (schema, table) pair with `parse_relation` (pure, no
database), the engine validates it with `load_table` when it creates a shape, and keeps the resulting
`TableInfo` next to the shape's log (`to_json`/`from_json`), so serving a shape after a restart needs no
catalog query. `TableInfo.fingerprint` covers everything a shape's messages depend on (the table's identity,
column names, types and modifiers, the key); the engine compares it after a restart to notice a schema change
that happened while it was down, which the replication stream alone would only show at the next write.

    >>> parse_relation('public."Items"')
    ('public', 'Items')
    >>> parse_columns('id,"Name"')
    ('id', 'Name')
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

import psycopg

MAX_IDENTIFIER_BYTES: Final = 63


class CatalogError(ValueError):
    """The request names something that is not there or cannot be used; `field` is the request parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _parse_identifier(text: str) -> str:
    """One SQL identifier as Postgres reads it: "quoted" keeps its case (with "" for a quote), bare folds
    to lower case and may only hold identifier characters."""
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise ValueError(f"Invalid identifier with unescaped quote: {text}")
        inner = text[1:-1]
        if inner == "":
            raise ValueError("Invalid zero-length delimited identifier")
        # A lone quote inside means the text was not one identifier.
        if inner.replace('""', "").count('"'):
            raise ValueError(f"Invalid identifier with unescaped quote: {inner}")
        name = inner.replace('""', '"')
    else:
        if text == "":
            raise ValueError("Invalid zero-length delimited identifier")
        if not (text[0].isalpha() or text[0] == "_") or not all(ch.isalnum() or ch in "_$" for ch in text):
            raise ValueError(f"Invalid unquoted identifier contains special characters: {text}")
        name = text.lower()
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise ValueError(f"Identifier is too long (max length is {MAX_IDENTIFIER_BYTES})")
    return name


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_relation(text: str) -> tuple[str, str]:
    """`table`, `schema.table`, either part "quoted" → (schema, table); schema defaults to public."""
    parts = _split_outside_quotes(text.strip(), ".")
    if len(parts) == 1:
        return "public", _parse_identifier(parts[0])
    if len(parts) == 2:
        return _parse_identifier(parts[0]), _parse_identifier(parts[1])
    raise ValueError(f"Invalid relation identifier, too many delimiters: {text}")


def parse_columns(text: str) -> tuple[str, ...]:
    """The `columns` parameter: a comma list of (possibly quoted) column names."""
    return tuple(_parse_identifier(part) for part in _split_outside_quotes(text, ","))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class ColumnMeta:
    name: str
    type_oid: int
    typname: str  # pg_type.typname of the column's type ('_text' for text[])
    element_typname: str | None  # for arrays, the element type's name ('text'); None otherwise
    dims: int  # array dimensions (attndims; at least 1 for an array column)
    type_modifier: int
    not_null: bool
    pk_index: int | None  # position in the primary key, None when not part of it
    generated: bool

    @property
    def schema_type(self) -> str:
        """The `type` Electric's schema header names: the element type for arrays, else the type itself."""
        return self.element_typname if self.element_typname is not None and self.dims > 0 else self.typname


@dataclass(frozen=True, slots=True)
class TableInfo:
    oid: int
    schema: str
    table: str
    columns: tuple[ColumnMeta, ...]
    primary_key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> ColumnMeta | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None

    @property
    def where_types(self) -> dict[str, str]:
        """{column: typname} for where-clause binding."""
        return {column.name: column.typname for column in self.columns}

    @property
    def fingerprint(self) -> str:
        """Changes exactly when something a shape's messages depend on changes (not e.g. nullability)."""
        shape_facts = {
            "oid": self.oid,
            "relation": [self.schema, self.table],
            "columns": [[c.name, c.type_oid, c.type_modifier] for c in self.columns],
            "primary_key": list(self.primary_key),
        }
        return hashlib.sha256(json.dumps(shape_facts, sort_keys=True).encode()).hexdigest()[:32]

    def key_columns(self) -> tuple[str, ...]:
        """The columns a row's key is built from: the primary key, or every column (by name) without one."""
        return self.primary_key or tuple(sorted(self.column_names))

    def to_json(self) -> dict[str, Any]:
        return {
            "oid": self.oid,
            "schema": self.schema,
            "table": self.table,
            "primary_key": list(self.primary_key),
            "columns": [
                {
                    "name": c.name,
                    "type_oid": c.type_oid,
                    "typname": c.typname,
                    "element_typname": c.element_typname,
                    "dims": c.dims,
                    "type_modifier": c.type_modifier,
                    "not_null": c.not_null,
                    "pk_index": c.pk_index,
                    "generated": c.generated,
                }
                for c in self.columns
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableInfo:
        return cls(
            oid=int(data["oid"]),
            schema=data["schema"],
            table=data["table"],
            primary_key=tuple(data["primary_key"]),
            columns=tuple(ColumnMeta(**column) for column in data["columns"]),
        )


_TABLE_QUERY: Final = """
SELECT c.oid::int8, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

_COLUMNS_QUERY: Final = """
SELECT a.attname::text, a.atttypid::int8, t.typname::text,
       CASE WHEN t.typcategory = 'A' THEN e.typname::text END,
       CASE WHEN t.typcategory = 'A' THEN greatest(a.attndims, 1) ELSE 0 END,
       a.atttypmod, a.attnotnull, a.attgenerated <> ''
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PRIMARY_KEY_QUERY: Final = """
SELECT a.attname::text
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.position
"""


def table_not_found_message(schema: str, table: str) -> str:
    # Electric's wording, so clients and operators see the same hint about quoting.
    return (
        f'Table "{schema}"."{table}" does not exist. '
        "If the table name contains capitals or special characters you must quote it."
    )


def load_table(conn: psycopg.Connection[Any], schema: str, table: str) -> TableInfo | None:
    """The table as the catalog has it now, or None when there is no such (ordinary or partitioned) table."""
    row = conn.execute(_TABLE_QUERY, [schema, table]).fetchone()
    if row is None or row[1] not in ("r", "p"):
        return None
    oid = int(row[0])
    primary_key = tuple(name for (name,) in conn.execute(_PRIMARY_KEY_QUERY, [oid]))
    columns = tuple(
        ColumnMeta(
            name=name,
            type_oid=int(type_oid),
            typname=typname,
            element_typname=element,
            dims=int(dims),
            type_modifier=int(typmod),
            not_null=bool(not_null),
            pk_index=primary_key.index(name) if name in primary_key else None,
            generated=bool(generated),
        )
        for name, type_oid, typname, element, dims, typmod, not_null, generated in conn.execute(_COLUMNS_QUERY, [oid])
    )
    return TableInfo(oid=oid, schema=schema, table=table, columns=columns, primary_key=primary_key)


def select_columns(info: TableInfo, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The columns a shape serves, in table order; CatalogError (field `columns`) names what is wrong.

    Same rules and wording as Electric: the list must include every primary key column and only existing,
    non-generated columns (pgoutput in Postgres 15 does not replicate generated columns)."""
    if requested is None:
        generated = [c.name for c in info.columns if c.generated]
        if generated:
            raise CatalogError(
                "columns",
                "The following columns are generated and cannot be included in the shape: "
                + ", ".join(generated)
                + ". You can exclude them from the shape by explicitly listing which columns "
                "to fetch in the 'columns' query param",
            )
        return info.column_names
    missing_pk = [name for name in info.primary_key if name not in requested]
    if missing_pk:
        raise CatalogError(
            "columns", "The list of columns must include all primary key columns, missing: " + ", ".join(missing_pk)
        )
    unknown = [name for name in requested if info.column(name) is None]
    if unknown:
        raise CatalogError("columns", "The following columns are not found on the table: " + ", ".join(unknown))
    generated = [name for name in requested if (column := info.column(name)) is not None and column.generated]
    if generated:
        raise CatalogError(
            "columns",
            "The following columns are generated and cannot be included in the shape: " + ", ".join(generated),
        )
    wanted = set(requested)
    return tuple(name for name in info.column_names if name in wanted)


def electric_schema(info: TableInfo, columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The `electric-schema` header: per selected column its type, dims, pk_index, not_null and modifiers,
    the way Electric derives them from the column's type modifier."""
    wanted = set(columns)
    schema: dict[str, dict[str, Any]] = {}
    for column in info.columns:
        if column.name not in wanted:
            continue
        entry: dict[str, Any] = {"type": column.schema_type}
        if column.dims:
            entry["dims"] = column.dims
        if column.pk_index is not None:
            entry["pk_index"] = column.pk_index
        if column.not_null:
            entry["not_null"] = True
        entry.update(_modifier(column.schema_type, column.type_modifier))
        schema[column.name] = entry
    return schema


_TIME_TYPES: Final = frozenset({"time", "timetz", "timestamp", "timestamptz"})
_INTERVAL_FIELDS: Final = (
    ("YEAR", 1 << 2),
    ("MONTH", 1 << 1),
    ("DAY", 1 << 3),
    ("HOUR", 1 << 10),
    ("MINUTE", 1 << 11),
    ("SECOND", 1 << 12),
)
_INTERVAL_ALL_FIELDS: Final = 0x7FFF


def _modifier(typname: str, typmod: int) -> dict[str, Any]:
    if typmod > 0 and typname in ("varchar", "text"):
        return {"max_length": typmod - 4}
    if typmod > 0 and typname == "bpchar":
        return {"length": typmod - 4}
    if typname in ("bit", "varbit"):
        return {"length": typmod}
    if typname == "interval" and typmod > -1:
        fields_mask = (typmod >> 16) & 0xFFFF
        precision = typmod & 0xFFFF
        result: dict[str, Any] = {}
        if fields_mask != _INTERVAL_ALL_FIELDS:
            names = [name for name, bit in _INTERVAL_FIELDS if fields_mask & bit]
            if names:
                result["fields"] = names[0] if len(names) == 1 else f"{names[0]} TO {names[-1]}"
        if precision != 0xFFFF:
            result["precision"] = precision
        return result
    if typmod > 0 and typname in _TIME_TYPES:
        return {"precision": typmod}
    if typname == "numeric" and typmod > -1:
        packed = typmod - 4
        return {"precision": (packed >> 16) & 0xFFFF, "scale": packed & 0xFFFF}
    if typmod > -1:
        return {"type_mod": typmod}
    return {}


def publication_covers(conn: psycopg.Connection[Any], publication: str, schema: str, table: str) -> bool:
    """Whether `publication` publishes the table (listed, or FOR ALL TABLES)."""
    row = conn.execute(
        "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s",
        [publication, schema, table],
    ).fetchone()
    return row is not None


def replica_identity(conn: psycopg.Connection[Any], oid: int) -> str:
    row = conn.execute("SELECT relreplident::text FROM pg_class WHERE oid = %s", [oid]).fetchone()
    return str(row[0]) if row is not None else "d"
