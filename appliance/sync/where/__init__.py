"""Shape where-clauses: parsed into an AST, type-checked against the table, compiled to Python closures.

A shape's `where` is client input. It is never spliced into SQL: `parse_where` reads a small subset of
Postgres expression syntax into an AST (anything else is refused with the construct and its position), `bind`
resolves columns, `$n` parameters and types the way Postgres would, and the result can both

* evaluate a row given as Postgres text output (`BoundWhere.matches`, the hot path of live replication), and
* render itself back to SQL for the snapshot query (`BoundWhere.to_sql`), with every constant a placeholder.

Both must select exactly the same rows, or a client would see rows appear and vanish between the snapshot and
the live stream. So typing follows Postgres' operator resolution (see pgtypes.py), and where Postgres'
answer depends on the database's collation (ordering of text, ILIKE case folding) the SQL pins
`COLLATE "C"`, whose code point order is what Python compares.

The package, by step: lexer.py and parser.py (text to the AST of nodes.py), bind.py (names, params and types),
closures.py and like.py (the compiled row matchers), operands.py (what binding hands to compiling), errors.py
(`WhereError` and the input limits). Callers import from here.

Supported: column references (plain or "quoted"), 'strings', integers, decimals, TRUE/FALSE/NULL, $n,
`::type` casts on constants, = <> != < <= > >=, AND/OR/NOT, parentheses, [NOT] IN (constants),
[NOT] BETWEEN, IS [NOT] NULL/TRUE/FALSE/UNKNOWN, ISNULL/NOTNULL, IS [NOT] DISTINCT FROM, [NOT] LIKE/ILIKE,
and unary minus on numeric constants.

    >>> where = bind(parse_where("house_id = $1 AND deleted_at IS NULL"),
    ...              {"house_id": "int8", "deleted_at": "timestamptz"}, {1: "42"})
    >>> where.matches({"house_id": "42", "deleted_at": None})
    True
"""

from appliance.sync.where.bind import BoundWhere, bind, compile_where
from appliance.sync.where.errors import MAX_DEPTH, MAX_IDENTIFIER_BYTES, MAX_WHERE_BYTES, WhereError
from appliance.sync.where.nodes import (
    Between,
    BoolLit,
    BoolOp,
    Cast,
    Column,
    Comparison,
    Expr,
    InList,
    IsBool,
    IsDistinct,
    IsNull,
    Like,
    Negate,
    Not,
    NullLit,
    NumberLit,
    Param,
    StringLit,
)
from appliance.sync.where.operands import Predicate, Row
from appliance.sync.where.parser import parse_where

__all__ = [
    "MAX_DEPTH",
    "MAX_IDENTIFIER_BYTES",
    "MAX_WHERE_BYTES",
    "Between",
    "BoolLit",
    "BoolOp",
    "BoundWhere",
    "Cast",
    "Column",
    "Comparison",
    "Expr",
    "InList",
    "IsBool",
    "IsDistinct",
    "IsNull",
    "Like",
    "Negate",
    "Not",
    "NullLit",
    "NumberLit",
    "Param",
    "Predicate",
    "Row",
    "StringLit",
    "WhereError",
    "bind",
    "compile_where",
    "parse_where",
]
