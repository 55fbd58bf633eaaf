"""Binding: a parsed where-clause checked against a table's columns (name -> type) and its `$n` params the way
Postgres resolves names, parameters and operator types, and compiled into a `BoundWhere` that both evaluates rows
(closures.py) and renders itself back to SQL with every constant a placeholder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from psycopg import sql

from appliance.sync import pgtypes
from appliance.sync.pgtypes import PgInputError
from appliance.sync.where.closures import and_function, compare_function, in_function, operand_getter, or_function
from appliance.sync.where.errors import MAX_DEPTH, WhereError, unsupported
from appliance.sync.where.like import compile_like
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
from appliance.sync.where.operands import UNFOLDED, Operand, Pred, Predicate, Row, Scalar, constant_predicate
from appliance.sync.where.parser import parse_where


@dataclass(frozen=True)
class BoundWhere:
    """A where-clause checked against a table's columns and compiled. Immutable and safe to share."""

    expr: Expr
    columns_used: frozenset[str]
    _predicate: Predicate = field(repr=False)
    _sql: sql.Composable = field(repr=False)
    _sql_params: tuple[object, ...] = field(repr=False)

    def matches(self, row: Row) -> bool:
        """Whether Postgres' WHERE keeps the row (TRUE only; FALSE and NULL drop it).

        `row` maps column names to Postgres text output (None for NULL) and must hold every column in
        `columns_used`.
        """
        return self._predicate(row) is True

    def evaluate(self, row: Row) -> bool | None:
        """The three-valued result: True, False or None (SQL NULL / unknown)."""
        return self._predicate(row)

    def to_sql(self) -> tuple[sql.Composable, list[object]]:
        """The condition as SQL with `%s` placeholders, and their values (strings or None), in order.

        Each value carries an explicit cast to the type Postgres gave the original constant, and
        collation-sensitive operations use COLLATE "C". Date/time constants are sent fully qualified
        (`+00`), but comparing a timestamp with a timestamptz column, like matches(), assumes the session
        runs with TimeZone=UTC, as the sync engine's connections do.
        """
        return self._sql, list(self._sql_params)


def bind(expr: Expr, columns: Mapping[str, str], params: Mapping[int, str]) -> BoundWhere:
    """Resolve columns (name -> pg_type.typname) and `$n` params, type-check, and compile `expr`."""
    for key, value in params.items():
        if not isinstance(key, int) or isinstance(key, bool) or key < 1:
            raise WhereError(f"params keys must be positive integers, got {key!r}", field="params")
        if not isinstance(value, str):
            raise WhereError(f"params[{key}] must be a string", field="params")
        if "\x00" in value:
            raise WhereError(f"params[{key}] contains a NUL character", field="params")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise WhereError(f"params[{key}] is not valid UTF-8 text", field="params") from None
    binder = _Binder(columns, params)
    try:
        predicate = binder.predicate(expr, "WHERE")
    except RecursionError:
        # Only reachable with a hand-built AST: parse_where caps nesting well below the recursion limit.
        raise WhereError(f"expression nested too deeply (more than {MAX_DEPTH} levels)") from None
    unused = sorted(set(params) - binder.params_used)
    if unused:
        raise WhereError(
            "params given but not used in where: " + ", ".join(f"params[{i}] (${i})" for i in unused),
            field="params",
        )
    return BoundWhere(expr, predicate.columns, predicate.fn, predicate.sql, predicate.params)


def compile_where(text: str, columns: Mapping[str, str], params: Mapping[int, str] | None = None) -> BoundWhere:
    """parse_where + bind."""
    return bind(parse_where(text), columns, params or {})


class _Binder:
    def __init__(self, columns: Mapping[str, str], params: Mapping[int, str]) -> None:
        self.columns = columns
        self.params = params
        self.params_used: set[int] = set()

    # -- operands

    def operand(self, node: Expr) -> Operand:
        if isinstance(node, Column):
            if node.name not in self.columns:
                raise WhereError(f'unknown column "{node.name}"', node.pos)
            return Scalar(self.columns[node.name], node.pos, f'column "{node.name}"', column=node.name)
        if isinstance(node, StringLit):
            return Scalar(None, node.pos, _quote_label(node.value), value=node.value)
        if isinstance(node, NullLit):
            return Scalar(None, node.pos, "NULL")
        if isinstance(node, BoolLit):
            return Scalar("bool", node.pos, "TRUE" if node.value else "FALSE", value=node.value)
        if isinstance(node, NumberLit):
            return self._number(node)
        if isinstance(node, Param):
            if node.index not in self.params:
                raise WhereError(f"${node.index} is used but params[{node.index}] is not given", node.pos, "params")
            self.params_used.add(node.index)
            return Scalar(None, node.pos, f"${node.index}", value=self.params[node.index])
        if isinstance(node, Cast):
            return self._cast(node)
        if isinstance(node, Negate):
            inner = self.operand(node.operand)
            if not isinstance(inner, Scalar) or inner.column is not None or inner.pgtype not in pgtypes.NUMBER_TYPES:
                raise unsupported("unary minus on a non-numeric operand", node.pos)
            try:
                value = pgtypes.negate_constant(inner.value, inner.pgtype)
            except PgInputError as exc:
                raise WhereError(str(exc), node.pos) from None
            return Scalar(inner.pgtype, node.pos, f"-{inner.label}", value=value)
        return self.predicate(node, "")

    def _number(self, node: NumberLit) -> Scalar:
        text = node.text
        digits = text.lstrip("-")
        if digits.isdigit():
            value = int(text)
            for typname in ("int4", "int8"):
                low, high = pgtypes.INT_RANGES[typname]
                if low <= value <= high:
                    return Scalar(typname, node.pos, text, value=value)
            return Scalar("numeric", node.pos, text, value=Decimal(value))
        try:
            return Scalar("numeric", node.pos, text, value=pgtypes.parse_input("numeric", text))
        except PgInputError as exc:
            raise WhereError(str(exc), node.pos) from None

    def _cast(self, node: Cast) -> Scalar:
        inner = self.operand(node.operand)
        target = node.type_name
        if isinstance(inner, Pred) or inner.column is not None:
            raise unsupported(f"cast of {inner.label} (only constants and params can be cast)", node.pos)
        if target == "json" and inner.value is not None:
            raise WhereError("json values cannot be compared; use jsonb", node.pos)
        try:
            if inner.pgtype is None:
                value = None if inner.value is None else pgtypes.parse_input(target, inner.value)
            else:
                value = pgtypes.cast_constant(inner.value, inner.pgtype, target, explicit=True)
        except PgInputError as exc:
            raise WhereError(f"cannot cast {inner.label} to {target}: {exc}", node.pos) from None
        return Scalar(target, node.pos, f"{inner.label}::{target}", value=value)

    def _typed(self, scalar: Scalar, target: str, context: str) -> Scalar:
        """Give an untyped constant the type its context demands (Postgres' unknown -> type coercion)."""
        if scalar.pgtype is not None:
            return scalar
        if scalar.value is None:
            return Scalar(target, scalar.pos, scalar.label)
        try:
            value = pgtypes.parse_input(target, scalar.value)
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", scalar.pos) from None
        return Scalar(target, scalar.pos, scalar.label, value=value)

    # -- boolean context

    def predicate(self, node: Expr, context: str) -> Pred:
        """Bind `node` where a boolean is required (WHERE itself, AND/OR/NOT arguments, IS TRUE …)."""
        if isinstance(node, BoolOp):
            return self._bool_op(node)
        if isinstance(node, Not):
            return self._not(node)
        if isinstance(node, Comparison):
            return self._comparison(node.op, self.operand(node.left), self.operand(node.right), node.pos)
        if isinstance(node, InList):
            return self._in_list(node)
        if isinstance(node, Like):
            return self._like(node)
        if isinstance(node, Between):
            return self._between(node)
        if isinstance(node, IsNull):
            return self._is_null(node)
        if isinstance(node, IsBool):
            return self._is_bool(node)
        if isinstance(node, IsDistinct):
            return self._is_distinct(node)
        operand = self.operand(node)
        if isinstance(operand, Pred):
            return operand
        return self._as_predicate(operand, context or "a boolean context")

    def _as_predicate(self, scalar: Scalar, context: str) -> Pred:
        if scalar.pgtype is None:
            scalar = self._typed(scalar, "bool", f"argument of {context} must be boolean")
        if scalar.pgtype != "bool":
            raise WhereError(f"argument of {context} must be type boolean, not {scalar.label} of type {scalar.pgtype}",
                             scalar.pos)
        sql_part, params = _render(scalar)
        if scalar.column is None:
            return self._folded(scalar.value, sql_part, params, scalar.pos)
        name = scalar.column

        def is_true(row: Row) -> bool | None:
            value = row[name]
            return None if value is None else value == "t"

        return Pred(is_true, sql_part, params, frozenset({name}), scalar.pos, scalar.label)

    @staticmethod
    def _folded(value: bool | None, sql_part: sql.Composable, params: tuple[object, ...], pos: int) -> Pred:
        return Pred(constant_predicate(value), sql_part, params, frozenset(), pos, folded=value)

    def _finish(self, fn: Predicate, sql_part: sql.Composable, params: tuple[object, ...],
                columns: frozenset[str], pos: int) -> Pred:
        # Expressions over constants only are decided once here, not per row.
        if not columns:
            return self._folded(fn({}), sql_part, params, pos)
        return Pred(fn, sql_part, params, columns, pos)

    def _bool_op(self, node: BoolOp) -> Pred:
        parts = [self.predicate(arg, node.op) for arg in node.args]
        sql_part = sql.SQL("(") + sql.SQL(f" {node.op} ").join(p.sql for p in parts) + sql.SQL(")")
        params = tuple(v for p in parts for v in p.params)
        columns = frozenset().union(*(p.columns for p in parts))
        # Constant arguments either decide the result outright or drop out of the per-row closure.
        decisive = node.op == "OR"
        if any(p.folded is decisive for p in parts):
            return Pred(constant_predicate(decisive), sql_part, params, columns, node.pos, folded=decisive)
        unknown = any(p.folded is None for p in parts)
        fns = [p.fn for p in parts if p.folded is UNFOLDED]
        fn = and_function(fns, unknown) if node.op == "AND" else or_function(fns, unknown)
        return self._finish(fn, sql_part, params, columns, node.pos)

    def _not(self, node: Not) -> Pred:
        inner = self.predicate(node.operand, "NOT")
        inner_fn = inner.fn

        def negated(row: Row) -> bool | None:
            result = inner_fn(row)
            return None if result is None else not result

        return self._finish(negated, sql.SQL("(NOT {})").format(inner.sql), inner.params, inner.columns, node.pos)

    # -- comparisons

    def _resolve_pair(self, left: Operand, right: Operand, what: str) -> tuple[Operand, Operand, str]:
        """Give untyped sides a type and pick the comparison domain, as Postgres' operator resolution does."""
        left_type, right_type = _type_of(left), _type_of(right)
        if left_type is None and right_type is None:
            left_type = right_type = "text"
        context = f"cannot compare {left.label} with {right.label}"
        for operand, typname in ((left, left_type), (right, right_type)):
            if typname is not None and (typname not in pgtypes.SCALAR_TYPES or typname == "json"):
                raise WhereError(f"{what} on {operand.label} of type {typname} is not supported", operand.pos)
        if isinstance(left, Scalar):
            left = self._typed(left, right_type or left_type, context)  # type: ignore[arg-type]
        if isinstance(right, Scalar):
            right = self._typed(right, left_type or right_type, context)  # type: ignore[arg-type]
        try:
            domain = pgtypes.comparison_domain(_type_of(left), _type_of(right))  # type: ignore[arg-type]
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", right.pos) from None
        return left, right, domain

    def _comparison(self, op: str, left: Operand, right: Operand, pos: int) -> Pred:
        left, right, domain = self._resolve_pair(left, right, f"comparison {op}")
        if op not in ("=", "<>") and domain not in pgtypes.ORDERED_DOMAINS:
            raise WhereError(f"ordering comparison {op} on {domain} values is not supported", pos)
        fn = compare_function(op, operand_getter(left, domain), operand_getter(right, domain), domain)
        left_sql, left_params = _render(left)
        right_sql, right_params = _render(right)
        ordering_text = op not in ("=", "<>") and domain in pgtypes.COLLATED_DOMAINS
        collate = sql.SQL(' COLLATE "C"') if ordering_text else sql.SQL("")
        sql_part = sql.SQL("({} {} {}{})").format(left_sql, sql.SQL(op), right_sql, collate)
        return self._finish(fn, sql_part, left_params + right_params, _columns_of(left, right), pos)

    def _between(self, node: Between) -> Pred:
        # Postgres rewrites BETWEEN into two comparisons, each resolved on its own; so do we.
        operand = self.operand(node.operand)
        if node.negated:
            parts = [self._comparison("<", operand, self.operand(node.low), node.pos),
                     self._comparison(">", operand, self.operand(node.high), node.pos)]
        else:
            parts = [self._comparison(">=", operand, self.operand(node.low), node.pos),
                     self._comparison("<=", operand, self.operand(node.high), node.pos)]
        joiner = " OR " if node.negated else " AND "
        sql_part = sql.SQL("(") + sql.SQL(joiner).join(p.sql for p in parts) + sql.SQL(")")
        fns = [p.fn for p in parts]
        fn = or_function(fns, False) if node.negated else and_function(fns, False)
        return self._finish(fn, sql_part, parts[0].params + parts[1].params, parts[0].columns | parts[1].columns,
                            node.pos)

    def _is_distinct(self, node: IsDistinct) -> Pred:
        left, right, domain = self._resolve_pair(self.operand(node.left), self.operand(node.right), "IS DISTINCT FROM")
        left_get, right_get = operand_getter(left, domain), operand_getter(right, domain)
        same = node.negated

        def distinct(row: Row) -> bool:
            a = left_get(row)
            b = right_get(row)
            if a is None or b is None:
                return (a is None and b is None) is same
            return (a == b) is same

        left_sql, left_params = _render(left)
        right_sql, right_params = _render(right)
        keyword = "IS NOT DISTINCT FROM" if node.negated else "IS DISTINCT FROM"
        sql_part = sql.SQL("({} {} {})").format(left_sql, sql.SQL(keyword), right_sql)
        return self._finish(distinct, sql_part, left_params + right_params, _columns_of(left, right), node.pos)

    def _in_list(self, node: InList) -> Pred:
        lhs = self.operand(node.operand)
        items: list[Scalar] = []
        for item_node in node.items:
            item = self.operand(item_node)
            if not isinstance(item, Scalar) or item.column is not None:
                raise unsupported(f"{item.label} in an IN list (only constants and params)", item.pos)
            items.append(item)
        op = "<>" if node.negated else "="
        if len(items) == 1:
            # Postgres turns a one-item IN list into a plain comparison.
            return self._comparison(op, lhs, items[0], node.pos)
        common = pgtypes.select_common_type([_type_of(lhs), *(item.pgtype for item in items)])
        if common is None:
            # No common type: Postgres falls back to OR-ed = (AND-ed <> for NOT IN), each resolved alone.
            parts = [self._comparison(op, lhs, item, node.pos) for item in items]
            fns = [p.fn for p in parts]
            fn = and_function(fns, False) if node.negated else or_function(fns, False)
            joiner = " AND " if node.negated else " OR "
            sql_part = sql.SQL("(") + sql.SQL(joiner).join(p.sql for p in parts) + sql.SQL(")")
            params = tuple(v for p in parts for v in p.params)
            return self._finish(fn, sql_part, params, frozenset().union(*(p.columns for p in parts)), node.pos)
        context = f"IN list of {lhs.label}"
        coerced = [self._coerce_item(item, common, context) for item in items]
        lhs, probe, domain = self._resolve_pair(lhs, coerced[0], "IN")
        keys = {pgtypes.constant_key(item.value, common, domain) for item in coerced if item.value is not None}
        has_null = any(item.value is None for item in coerced)
        fn = in_function(operand_getter(lhs, domain), frozenset(keys), has_null, node.negated)
        in_sql, in_params = _in_sql(lhs, coerced, node.negated)
        return self._finish(fn, in_sql, in_params, _columns_of(lhs, probe), node.pos)

    def _coerce_item(self, item: Scalar, common: str, context: str) -> Scalar:
        if item.pgtype is None:
            return self._typed(item, common, context)
        try:
            value = pgtypes.cast_constant(item.value, item.pgtype, common, explicit=False)
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", item.pos) from None
        return Scalar(common, item.pos, item.label, value=value)

    # -- LIKE, IS

    def _like(self, node: Like) -> Pred:
        keyword = ("NOT " if node.negated else "") + ("ILIKE" if node.case_insensitive else "LIKE")
        operand = self.operand(node.operand)
        pattern = self.operand(node.pattern)
        if isinstance(operand, Pred) or (operand.pgtype is not None and operand.pgtype not in pgtypes.STRING_TYPES):
            typname = _type_of(operand)
            raise WhereError(f"{keyword} needs a text operand, {operand.label} is of type {typname}", node.pos)
        if not isinstance(pattern, Scalar) or pattern.column is not None:
            raise unsupported(f"{keyword} pattern {pattern.label} (only constants and params)", pattern.pos)
        if pattern.pgtype is not None and pattern.pgtype not in pgtypes.STRING_TYPES:
            raise WhereError(f"{keyword} pattern {pattern.label} is of type {pattern.pgtype}, not text", pattern.pos)
        operand = self._typed(operand, "text", keyword)
        pattern = self._typed(pattern, "text", keyword)
        # The pattern is taken as text (a bpchar pattern loses its padding); the subject is not: ~~(bpchar,
        # text) matches the padded value.
        pattern_text = pattern.value.rstrip(" ") if pattern.pgtype == "bpchar" and pattern.value else pattern.value
        if pattern_text is None:
            matcher = None
        else:
            try:
                matcher = compile_like(pattern_text, node.case_insensitive)
            except ValueError as exc:
                raise WhereError(str(exc), pattern.pos) from None
        invert = node.negated
        if operand.column is None or matcher is None:
            subject = operand.value
            result = None if subject is None or matcher is None else matcher(subject) is not invert
            fn = constant_predicate(result)
        else:
            name = operand.column
            match = matcher

            def fn(row: Row) -> bool | None:
                value = row[name]
                return None if value is None else match(value) is not invert

        operand_sql, operand_params = _render(operand)
        pattern_sql, pattern_params = _render(pattern)
        collate = sql.SQL(' COLLATE "C"') if node.case_insensitive else sql.SQL("")
        sql_part = sql.SQL("({} {} {}{})").format(operand_sql, sql.SQL(keyword), pattern_sql, collate)
        return self._finish(fn, sql_part, operand_params + pattern_params, _columns_of(operand), node.pos)

    def _is_null(self, node: IsNull) -> Pred:
        operand = self.operand(node.operand)
        keyword = "IS NOT NULL" if node.negated else "IS NULL"
        if isinstance(operand, Scalar) and operand.pgtype is None:
            operand = self._typed(operand, "text", keyword)
        want_null = not node.negated
        fn: Predicate
        if isinstance(operand, Pred):
            inner = operand.fn

            def fn(row: Row) -> bool:
                return (inner(row) is None) is want_null

        elif operand.column is not None:
            name = operand.column

            def fn(row: Row) -> bool:
                return (row[name] is None) is want_null

        else:
            fn = constant_predicate((operand.value is None) is want_null)
        operand_sql, params = _render(operand)
        return self._finish(fn, sql.SQL("({} {})").format(operand_sql, sql.SQL(keyword)), params,
                            _columns_of(operand), node.pos)

    def _is_bool(self, node: IsBool) -> Pred:
        word = {True: "TRUE", False: "FALSE", None: "UNKNOWN"}[node.value]
        keyword = f"IS NOT {word}" if node.negated else f"IS {word}"
        inner = self.predicate(node.operand, keyword)
        inner_fn, wanted, negated = inner.fn, node.value, node.negated

        def fn(row: Row) -> bool:
            return (inner_fn(row) is wanted) is not negated

        sql_part = sql.SQL("({} {})").format(inner.sql, sql.SQL(keyword))
        return self._finish(fn, sql_part, inner.params, inner.columns, node.pos)


def _quote_label(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return "'" + shown.replace("'", "''") + "'"


def _type_of(operand: Operand) -> str | None:
    return "bool" if isinstance(operand, Pred) else operand.pgtype


def _columns_of(*operands: Operand) -> frozenset[str]:
    names: set[str] = set()
    for operand in operands:
        if isinstance(operand, Pred):
            names |= operand.columns
        elif operand.column is not None:
            names.add(operand.column)
    return frozenset(names)


def _render(operand: Operand) -> tuple[sql.Composable, tuple[object, ...]]:
    """SQL for an operand: a quoted identifier, or a placeholder cast to the constant's resolved type."""
    if isinstance(operand, Pred):
        return operand.sql, operand.params
    if operand.column is not None:
        return sql.Identifier(operand.column), ()
    typname = operand.pgtype or "text"
    if typname not in pgtypes.SCALAR_TYPES:
        # The cast is spliced into SQL, so it must come from pgtypes' fixed list, never from the caller.
        raise WhereError(f"constants of type {typname!r} are not supported", operand.pos)
    return sql.SQL("{}::" + typname).format(sql.Placeholder()), (pgtypes.sql_text(operand.value, typname),)


def _in_sql(lhs: Operand, items: list[Scalar], negated: bool) -> tuple[sql.Composable, tuple[object, ...]]:
    lhs_sql, params = _render(lhs)
    rendered = [_render(item) for item in items]
    keyword = "NOT IN" if negated else "IN"
    sql_part = sql.SQL("({} {} ({}))").format(lhs_sql, sql.SQL(keyword), sql.SQL(", ").join(r[0] for r in rendered))
    return sql_part, params + tuple(v for r in rendered for v in r[1])
