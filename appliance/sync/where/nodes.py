"""The where-clause AST that `parse_where` produces and `bind` type-checks: one frozen dataclass per construct,
each with the 1-based position of its text for error messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class StringLit:
    value: str
    pos: int


@dataclass(frozen=True, slots=True)
class NumberLit:
    text: str  # digits as written, with the sign of any unary minus folded in (as Postgres' grammar does)
    pos: int


@dataclass(frozen=True, slots=True)
class BoolLit:
    value: bool
    pos: int


@dataclass(frozen=True, slots=True)
class NullLit:
    pos: int


@dataclass(frozen=True, slots=True)
class Param:
    index: int
    pos: int


@dataclass(frozen=True, slots=True)
class Cast:
    operand: Expr
    type_name: str  # resolved pg_type.typname
    pos: int


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Expr  # a cast constant; minus on a bare number is folded into the NumberLit
    pos: int


@dataclass(frozen=True, slots=True)
class Comparison:
    op: Literal["=", "<>", "<", "<=", ">", ">="]
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["AND", "OR"]
    args: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Like:
    operand: Expr
    pattern: Expr
    negated: bool
    case_insensitive: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Between:
    operand: Expr
    low: Expr
    high: Expr
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsBool:
    operand: Expr
    value: bool | None  # None is IS UNKNOWN
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsDistinct:
    left: Expr
    right: Expr
    negated: bool  # IS NOT DISTINCT FROM
    pos: int


Expr = (
    Column | StringLit | NumberLit | BoolLit | NullLit | Param | Cast | Negate | Comparison | BoolOp | Not
    | InList | Like | Between | IsNull | IsBool | IsDistinct
)
