"""Which shapes a row change can concern, without testing every shape of its table.

Most shapes filter on one column by equality: the product's `house_id IN ($1, ..., $n) AND deleted_at IS
NULL`, or `house_id = $1`. Such a shape can only hold a row whose column has one of its values, so shapes are
indexed by (column, value) of the first top-level `column = constant` or `column IN (constants)` conjunct of
their where, and a change is offered to the shapes under the values its new and old rows carry, plus the shapes
that have no such conjunct (tested as before). The shape's own where still decides (CompiledShape.convert):
the index only skips shapes that cannot match.

Values are compared in a canonical text form per type, and only for types whose equality is exactly that
form's equality: integers (Postgres accepts '+7' and ' 7 ' for 7), uuid (any case, braces), text and varchar
(Postgres's text equality is bytewise under deterministic collations, and sync/where compares text in "C"). A
conjunct over any other type, or with a constant this cannot read, leaves the shape unindexed. NULL equals
nothing, so a row whose column is NULL reaches no indexed shape of that column. A change whose old row lacks
the column (an identity other than FULL) is offered to every shape indexed on it, as convert() would count such
an old row as matching.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, Final

from appliance.sync.replication import Change
from appliance.sync.shape import CompiledShape
from appliance.sync.where import BoolOp, Column, Comparison, Expr, InList, NumberLit, Param, StringLit


def _integer(text: str) -> str | None:
    try:
        return str(int(text.strip()))
    except ValueError:
        return None


def _uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def _text(text: str) -> str:
    return text


NORMALIZERS: Final[dict[str, Callable[[str], str | None]]] = {
    "int2": _integer, "int4": _integer, "int8": _integer, "uuid": _uuid, "text": _text, "varchar": _text,
}

RoutingKey = tuple[str, frozenset[str]]  # (column, canonical values)


def _constant(node: Expr, params: tuple[str, ...]) -> str | None:
    if isinstance(node, StringLit):
        return node.value
    if isinstance(node, NumberLit):
        return node.text
    if isinstance(node, Param) and 1 <= node.index <= len(params):
        return params[node.index - 1]
    return None


def _conjuncts(expr: Expr) -> Iterable[Expr]:
    if isinstance(expr, BoolOp) and expr.op == "AND":
        for arg in expr.args:
            yield from _conjuncts(arg)
    else:
        yield expr


def _values(node: Expr, params: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """(column, constant texts) of `column = constant` (either way round) or `column IN (constants)`."""
    if isinstance(node, Comparison) and node.op == "=":
        for column, other in ((node.left, node.right), (node.right, node.left)):
            value = _constant(other, params)
            if isinstance(column, Column) and value is not None:
                return column.name, [value]
    if isinstance(node, InList) and not node.negated and isinstance(node.operand, Column):
        values = [_constant(item, params) for item in node.items]
        if all(value is not None for value in values):
            return node.operand.name, values  # type: ignore[return-value]
    return None


def routing_key(shape: CompiledShape) -> RoutingKey | None:
    """The (column, values) a row must have to be in `shape`, or None when its where gives none."""
    if shape.where is None:
        return None
    types = shape.table.where_types
    for conjunct in _conjuncts(shape.where.expr):
        found = _values(conjunct, shape.definition.params)
        if found is None:
            continue
        column, texts = found
        normalize = NORMALIZERS.get(types.get(column, ""))
        if normalize is None:
            continue
        values = [normalize(text) for text in texts]
        if any(value is None for value in values):
            continue
        return column, frozenset(values)  # type: ignore[arg-type]
    return None


class TableRoutes:
    """The shapes of one table, indexed by routing key; those without a key are always candidates."""

    def __init__(self) -> None:
        self._scan: set[Any] = set()
        self._index: dict[str, dict[str, set[Any]]] = {}  # column -> canonical value -> shapes
        self._keys: dict[Any, RoutingKey | None] = {}
        self._types: dict[str, str] = {}  # indexed column -> its type (one table: the same for every shape)

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, runtime: Any, shape: CompiledShape | None) -> None:
        self.remove(runtime)
        key = routing_key(shape) if shape is not None else None
        self._keys[runtime] = key
        if key is None:
            self._scan.add(runtime)
            return
        column, values = key
        assert shape is not None
        self._types[column] = shape.table.where_types[column]
        by_value = self._index.setdefault(column, {})
        for value in values:
            by_value.setdefault(value, set()).add(runtime)

    def remove(self, runtime: Any) -> None:
        if runtime not in self._keys:
            return
        key = self._keys.pop(runtime)
        if key is None:
            self._scan.discard(runtime)
            return
        column, values = key
        by_value = self._index[column]
        for value in values:
            shapes = by_value.get(value)
            if shapes is not None:
                shapes.discard(runtime)
                if not shapes:
                    del by_value[value]
        if not by_value:
            del self._index[column]
            del self._types[column]

    def all(self) -> set[Any]:
        return set(self._keys)

    def candidates(self, change: Change) -> set[Any]:
        """The shapes `change` may concern: every one for a truncate, else the unindexed ones and those
        indexed under a value of its new or old row."""
        if change.kind == "truncate":
            return self.all()
        found = set(self._scan)
        rows = [row for row in (change.new, change.old) if row is not None]
        if change.kind == "update" and change.new is not None and change.old is not None:
            rows[1] = {**change.new, **change.old}  # the old row as convert() sees it
        for column, by_value in self._index.items():
            normalize = NORMALIZERS[self._types[column]]
            for row in rows:
                if column not in row:
                    if row is not change.new:  # an old row without the column: it may have matched
                        for shapes in by_value.values():
                            found |= shapes
                    continue
                text = row[column]
                value = normalize(text) if text is not None else None
                if value is not None and value in by_value:
                    found |= by_value[value]
        return found
