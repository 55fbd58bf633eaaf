"""Postgres's own parser (libpg_query, through pglast) for what clients write: where-clauses and ORDER BY.

Electric parses a shape's `where` as `SELECT 1 WHERE <where>` with libpg_query and, when Postgres's grammar
refuses it, answers with the parser's message and its cursor in that wrapped text:
`At location 17: syntax error at or near "x"` for `1 x 1`. Clients (and people reading their errors) see
Postgres's words, so syntax is checked here with the same parser before the where package's own analysis, which
keeps its messages for what parses but is not supported (functions, unknown columns, types).

An ORDER BY (a subset's `order_by`) is parsed the same way, as `SELECT 1 ORDER BY <order_by>`, and reduced to
plain column references with a direction and a NULLS placement; the SQL the engine runs is rebuilt from those
(identifiers quoted by psycopg), never from the client's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pglast import ast, parser

WHERE_WRAPPER: Final = "SELECT 1 WHERE "
ORDER_BY_WRAPPER: Final = "SELECT 1 ORDER BY "
# pglast's SortByDir / SortByNulls values (Postgres's parsenodes.h).
_DIRECTIONS: Final = {0: None, 1: "ASC", 2: "DESC"}
_NULLS: Final = {0: None, 1: "NULLS FIRST", 2: "NULLS LAST"}


class SyntaxRefused(ValueError):
    """Postgres's parser refused the text; the message is Electric's wording of it."""


def _parse(wrapped: str) -> tuple[ast.Node, ...]:
    try:
        return parser.parse_sql(wrapped)
    except parser.ParseError as exc:
        message, location = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        raise SyntaxRefused(f"At location {location}: {message}" if location is not None else message) from None


def check_where_syntax(where: str) -> None:
    """Raise SyntaxRefused when Postgres's grammar does not accept `where` as a WHERE condition."""
    statements = _parse(WHERE_WRAPPER + where)
    if len(statements) != 1:
        raise SyntaxRefused('unescaped ";" causing statement split')


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    direction: Literal["ASC", "DESC"] | None
    nulls: Literal["NULLS FIRST", "NULLS LAST"] | None


def parse_order_by(order_by: str, columns: set[str] | frozenset[str]) -> tuple[SortKey, ...]:
    """`order_by` as sort keys over `columns`; raises SyntaxRefused (grammar) or ValueError (anything but
    plain columns of the table, in Electric's words where it has them)."""
    statements = _parse(ORDER_BY_WRAPPER + order_by)
    if len(statements) != 1:
        raise SyntaxRefused("Unexpected `;` in order by")
    select = getattr(statements[0], "stmt", None)
    if not isinstance(select, ast.SelectStmt) or not select.sortClause or select.limitCount is not None:
        raise ValueError("order_by must be a list of columns, each with an optional ASC/DESC and NULLS FIRST/LAST")
    keys = []
    for item in select.sortClause:
        node = item.node
        fields = (node.fields or ()) if isinstance(node, ast.ColumnRef) else ()
        if item.sortby_dir not in _DIRECTIONS or len(fields) != 1 or not isinstance(fields[0], ast.String):
            raise ValueError("order_by may only name columns of the shape's table (no expressions, USING or "
                             "qualified names)")
        name = fields[0].sval
        if name not in columns:
            raise ValueError(f"unknown reference {name}")
        keys.append(SortKey(name, _DIRECTIONS[item.sortby_dir], _NULLS.get(item.sortby_nulls)))  # type: ignore[arg-type]
    return tuple(keys)
