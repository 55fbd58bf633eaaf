"""What binding produces and compiling consumes: a bound operand (`Scalar`, a column or constant with its
Postgres type, or `Pred`, a compiled boolean sub-expression), the row and predicate types, and the comparison
operators."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from appliance.sync import pgtypes

Row = Mapping[str, "str | None"]
Predicate = Callable[[Row], "bool | None"]


@dataclass(frozen=True, slots=True)
class Scalar:
    """A column or constant operand. Untyped constants (string literal, $n, bare NULL) have pgtype None
    until the context decides, exactly like Postgres' `unknown` literals."""

    pgtype: str | None
    pos: int
    label: str
    column: str | None = None
    value: pgtypes.Value = None  # typed: the type's Python form; untyped: the raw text (None for NULL)


UNFOLDED: Final = object()


@dataclass(frozen=True, slots=True)
class Pred:
    """A boolean-valued expression, compiled: three-valued closure plus its SQL rendering."""

    fn: Predicate
    sql: sql.Composable
    params: tuple[object, ...]
    columns: frozenset[str]
    pos: int
    label: str = "boolean expression"
    folded: object = UNFOLDED  # True/False/None when the expression uses no column


Operand = Scalar | Pred

OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def constant_predicate(value: bool | None) -> Predicate:
    def predicate(row: Row) -> bool | None:
        return value

    return predicate
