"""Compiled closures: the Python functions that evaluate a bound where-clause on a row given as Postgres text
output (the hot path of live replication), specialised for `column <op> constant`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from appliance.sync import pgtypes
from appliance.sync.where.operands import OPERATORS, UNFOLDED, Operand, Pred, Predicate, Row, constant_predicate

# A getter yields an operand's key in the comparison domain for a row (None for NULL): a _ConstKey decided at
# bind time, a _ColumnKey converting the column's text output, or a boolean sub-expression's own predicate.
# Knowing which is which lets compare_function pick a specialised closure for `column <op> constant`.

_Getter = Callable[[Row], pgtypes.Key]


@dataclass(frozen=True, slots=True)
class _ConstKey:
    key: pgtypes.Key

    def __call__(self, row: Row) -> pgtypes.Key:
        return self.key


@dataclass(frozen=True, slots=True)
class _ColumnKey:
    name: str
    convert: Callable[[str], pgtypes.Key] | None

    def __call__(self, row: Row) -> pgtypes.Key:
        value = row[self.name]
        if value is None or self.convert is None:
            return value
        return self.convert(value)


def operand_getter(operand: Operand, domain: str) -> _Getter:
    if isinstance(operand, Pred):
        if operand.folded is not UNFOLDED:
            return _ConstKey(operand.folded)
        return operand.fn
    typname = operand.pgtype
    assert typname is not None
    if operand.column is not None:
        return _ColumnKey(operand.column, pgtypes.output_key_function(typname, domain))
    if operand.value is None:
        return _ConstKey(None)
    return _ConstKey(pgtypes.constant_key(operand.value, typname, domain))


# Domains whose text output is canonical, so equality can compare the text itself with the constant's text.
_TEXT_EQUALITY: Final[dict[str, Callable[[Any], str]]] = {
    pgtypes.INT: str,
    pgtypes.BOOL: lambda key: "t" if key else "f",
}


def compare_function(op: str, left: _Getter, right: _Getter, domain: str) -> Predicate:
    compare = OPERATORS[op]
    if isinstance(left, _ConstKey) and not isinstance(right, _ConstKey):
        # Keep the column on the left so the fast paths below apply; mirror the operator.
        mirrored = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        return compare_function(mirrored, right, left, domain)
    if isinstance(right, _ConstKey):
        key = right.key
        if key is None:
            return constant_predicate(None)
        if isinstance(left, _ConstKey):
            return constant_predicate(None if left.key is None else compare(left.key, key))
        if isinstance(left, _ColumnKey):
            name, convert = left.name, left.convert
            if op in ("=", "<>") and domain in _TEXT_EQUALITY and convert in (int, pgtypes.bool_output):
                # Integer and boolean text output is canonical: compare strings, skip parsing every row.
                convert, key = None, _TEXT_EQUALITY[domain](key)
            if convert is None:
                if op == "=":
                    def column_equals(row: Row) -> bool | None:
                        value = row[name]
                        return None if value is None else value == key

                    return column_equals

                def column_compare(row: Row) -> bool | None:
                    value = row[name]
                    return None if value is None else compare(value, key)

                return column_compare
            converter = convert

            def column_convert_compare(row: Row) -> bool | None:
                value = row[name]
                return None if value is None else compare(converter(value), key)

            return column_convert_compare
        getter = left

        def value_compare(row: Row) -> bool | None:
            value = getter(row)
            return None if value is None else compare(value, key)

        return value_compare

    def general_compare(row: Row) -> bool | None:
        a = left(row)
        if a is None:
            return None
        b = right(row)
        return None if b is None else compare(a, b)

    return general_compare


def in_function(lhs: _Getter, keys: frozenset[pgtypes.Key], has_null: bool, negated: bool) -> Predicate:
    # x IN (…) is true if any item equals, else NULL if an item (or x) is NULL, else false; NOT IN inverts.
    found, missing = (False, True) if negated else (True, False)
    if_missing = None if has_null else missing

    def member(row: Row) -> bool | None:
        value = lhs(row)
        if value is None:
            return None
        return found if value in keys else if_missing

    return member


def and_function(fns: list[Predicate], unknown: bool) -> Predicate:
    if not fns:
        return constant_predicate(None if unknown else True)
    if len(fns) == 2 and not unknown:
        first, second = fns

        def both(row: Row) -> bool | None:
            a = first(row)
            if a is False:
                return False
            b = second(row)
            if b is False:
                return False
            return None if a is None or b is None else True

        return both

    def every(row: Row) -> bool | None:
        saw_null = unknown
        for fn in fns:
            result = fn(row)
            if result is False:
                return False
            if result is None:
                saw_null = True
        return None if saw_null else True

    return every


def or_function(fns: list[Predicate], unknown: bool) -> Predicate:
    if not fns:
        return constant_predicate(None if unknown else False)

    def any_true(row: Row) -> bool | None:
        saw_null = unknown
        for fn in fns:
            result = fn(row)
            if result is True:
                return True
            if result is None:
                saw_null = True
        return None if saw_null else False

    return any_true
