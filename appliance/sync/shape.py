"""One shape, compiled: which rows of which table it holds and how each change becomes log messages.

`CompiledShape` is pure (no I/O): given the table as the catalog describes it and a `ShapeDefinition`, it
selects the columns, binds the where-clause, and turns a replicated row change into the messages Electric
would log for this shape:

- an insert (or an update whose old row did not match and new row does: a *move-in*) becomes `insert` with
  the whole row (selected columns);
- a delete (or an update whose old row matched and new row does not: a *move-out*) becomes `delete` with the
  key columns (replica=default) or the whole old row (replica=full);
- an update that stays in the shape becomes `update` with the key plus the changed columns (default), or the
  whole new row and `old_value` holding the old values of the changed columns (full); an update that
  changes none of the selected columns is dropped;
- an update that changes the key becomes `delete` of the old key at `op` and `insert` of the new one at
  `op + 1` (Electric numbers ops in steps of 2 for exactly this), linked by `key_change_to`/`key_change_from`.

Rows are Postgres text output (str) or None; the old row of an update is merged under the new one, so columns
the stream did not send in the old row (an identity other than FULL) count as unchanged.
"""

from __future__ import annotations

import weakref
from typing import Any, Final, Literal, NamedTuple

from appliance.sync import messages
from appliance.sync.catalog import TableInfo, select_columns
from appliance.sync.registry import ShapeDefinition
from appliance.sync.replication import Change
from appliance.sync.where import BoundWhere, compile_where

Row = dict[str, str | None]
Operation = Literal["insert", "update", "delete"]

# What equal definitions and tables have in common is made once and shared by their shapes: an engine holds
# thousands of shapes, most of them variants of a few (the same where and table, other columns or params).
# Shared, those objects are fewer to hold and to collect, and a change that reaches ten variants of one
# where-clause finds what they use already in the CPU's cache. With a copy per shape, converting changes to
# 10,000 shapes over 1,000 houses took 2.4 times as long per change as to 10 of their houses; shared, 1.6
# times (a profiling script timing CompiledShape.convert in the engine's loop, 20,000 changes each).
SHARED_TABLES_MAX: Final = 1_000  # table versions remembered (a schema change makes a new one)
SHARED_COLUMN_SETS_MAX: Final = 10_000  # column selections remembered


class _TableFacts:
    """What a shape's messages need to know about its table, made once per table version."""

    def __init__(self, table: TableInfo) -> None:
        self.table = table
        self.relation = [table.schema, table.table]
        self.prefix = messages.relation_prefix(table.schema, table.table)
        self.relation_bytes = messages.encode(self.relation)
        self.relation_json = self.relation_bytes.decode()
        self.where_types = table.where_types
        # What the replication stream's description of the table must match (engine._same_table); pgoutput
        # (Postgres 15) does not send generated columns.
        self.stream_signature: tuple[object, ...] = (
            table.oid,
            tuple((c.name, c.type_oid, c.type_modifier) for c in table.columns if not c.generated),
            table.primary_key,
        )


_table_facts: dict[TableInfo, _TableFacts] = {}
_column_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
# Kept while a shape uses them: BoundWhere is immutable and safe to share.
_wheres: weakref.WeakValueDictionary[tuple[object, ...], BoundWhere] = weakref.WeakValueDictionary()


def _facts(table: TableInfo) -> _TableFacts:
    facts = _table_facts.get(table)
    if facts is None:
        if len(_table_facts) >= SHARED_TABLES_MAX:
            _table_facts.clear()  # only sharing is lost
        facts = _table_facts[table] = _TableFacts(table)
    return facts


def _shared_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    shared = _column_sets.get(columns)
    if shared is None:
        if len(_column_sets) >= SHARED_COLUMN_SETS_MAX:
            _column_sets.clear()
        shared = _column_sets[columns] = columns
    return shared


def _bound_where(text: str, params: tuple[str, ...], facts: _TableFacts) -> BoundWhere:
    key = (text, params, facts.table)
    where = _wheres.get(key)
    if where is None:
        where = compile_where(text, facts.where_types, {index + 1: value for index, value in enumerate(params)})
        _wheres[key] = where
    return where


class ShapeMessage(NamedTuple):
    """A change message before the transaction-level headers (lsn, txids, last) are known. (A named tuple:
    the engine makes one per change and shape, and a frozen dataclass cost several times as much to make.)"""

    op_delta: int  # 0, or 1 for the insert half of a key change
    operation: Operation
    key: str
    value: Row
    old_value: Row | None = None
    key_change_to: str | None = None
    key_change_from: str | None = None

    def to_json(self, relation: list[str], lsn: int, op_position: int, xid: int, last: bool) -> dict[str, Any]:
        headers: dict[str, Any] = {
            "operation": self.operation,
            "relation": relation,
            "lsn": str(lsn),
            "op_position": op_position,
            "txids": [xid],
        }
        if self.key_change_to is not None:
            headers["key_change_to"] = self.key_change_to
        if self.key_change_from is not None:
            headers["key_change_from"] = self.key_change_from
        if last:
            headers["last"] = True
        message: dict[str, Any] = {"key": self.key, "value": self.value, "headers": headers}
        if self.old_value is not None:
            message["old_value"] = self.old_value
        return message

    def encode(self, relation_json: str, lsn_text: str, op_position: int, xid_text: str, last: bool) -> bytes:
        """`messages.encode(self.to_json(...))`, byte for byte, built directly: the engine encodes one message
        per change and shape. `relation_json` is the relation as encoded, `lsn_text` and `xid_text` the
        transaction's commit LSN and xid in decimal."""
        parts = [
            '{"key":',
            messages.encode_text(self.key),
            ',"value":',
            messages.encode_row(self.value),
            ',"headers":{"operation":"',
            self.operation,
            '","relation":',
            relation_json,
            ',"lsn":"',
            lsn_text,
            '","op_position":',
            str(op_position),
            ',"txids":[',
            xid_text,
            "]",
        ]
        if self.key_change_to is not None:
            parts += ',"key_change_to":', messages.encode_text(self.key_change_to)
        if self.key_change_from is not None:
            parts += ',"key_change_from":', messages.encode_text(self.key_change_from)
        if last:
            parts.append(',"last":true')
        parts.append("}")
        if self.old_value is not None:
            parts += ',"old_value":', messages.encode_row(self.old_value)
        parts.append("}")
        return "".join(parts).encode()


class CompiledShape:
    """A shape definition bound to its table; raises CatalogError / WhereError when the definition is bad."""

    __slots__ = (
        "_prefix",
        "_relation_json",
        "columns",
        "definition",
        "full",
        "key_columns",
        "relation",
        "relation_json",
        "stream_signature",
        "table",
        "where",
    )

    def __init__(self, definition: ShapeDefinition, table: TableInfo) -> None:
        facts = _facts(table)
        self.definition = definition
        self.table = facts.table  # an equal table: one object for every shape of this table version
        self.columns = _shared_columns(select_columns(table, definition.columns))
        self.where: BoundWhere | None = None
        if definition.where is not None:
            self.where = _bound_where(definition.where, definition.params, facts)
        # Without a primary key Electric keys a row by every selected column, by name.
        self.key_columns = table.primary_key or _shared_columns(tuple(sorted(self.columns)))
        self.full = definition.replica == "full"
        self.relation = facts.relation
        self._prefix = facts.prefix
        self._relation_json = facts.relation_bytes
        self.relation_json = facts.relation_json
        self.stream_signature = facts.stream_signature

    # -- snapshot

    def snapshot_message(self, row: Row, *, snapshot_mark: int | None = None) -> bytes:
        """One snapshot row: key, value and only `operation`/`relation` headers, as Electric's snapshot has
        (and the `snapshot_mark` of the subset snapshot it came from, for a subset's rows)."""
        key = messages.build_key("", "", row, self.key_columns, self._prefix)
        mark = b"" if snapshot_mark is None else b',"snapshot_mark":' + str(int(snapshot_mark)).encode()
        return b"".join(
            (
                b'{"key":',
                messages.encode(key),
                b',"value":',
                messages.encode(row),
                b',"headers":{"operation":"insert","relation":',
                self._relation_json,
                mark,
                b"}}",
            )
        )

    # -- live changes

    def _key(self, row: Row) -> str:
        return messages.build_key("", "", row, self.key_columns, self._prefix)

    def _project(self, row: Row) -> Row:
        return {column: row[column] for column in self.columns if column in row}

    def _matches(self, row: Row) -> bool:
        if self.where is None:
            return True
        return self.where.matches(row)

    def _matches_old(self, row: Row) -> bool:
        """An old row that may lack columns (identity other than FULL): when the where-clause needs what is
        missing, count it as matching, so a delete is rather sent for a row the client may not have than
        withheld from one it has."""
        if self.where is None:
            return True
        if not self.where.columns_used <= row.keys():
            return True
        return self.where.matches(row)

    def _delete_value(self, old: Row) -> Row:
        if self.full or not self.table.primary_key:
            return self._project(old)
        return {column: old.get(column) for column in self.key_columns}

    def convert(self, change: Change) -> list[ShapeMessage]:
        """The messages this shape logs for one row change (none if it does not concern the shape)."""
        if change.kind == "insert":
            assert change.new is not None
            if not self._matches(change.new):
                return []
            return [ShapeMessage(0, "insert", self._key(change.new), self._project(change.new))]
        if change.kind == "delete":
            assert change.old is not None
            if not self._matches_old(change.old):
                return []
            return [ShapeMessage(0, "delete", self._key(change.old), self._delete_value(change.old))]
        if change.kind == "update":
            assert change.new is not None
            return self._convert_update(change.new, change.old)
        return []

    def _convert_update(self, new: Row, partial_old: Row | None) -> list[ShapeMessage]:
        old = {**new, **partial_old} if partial_old is not None else new
        new_in = self._matches(new)
        old_in = self._matches(old)
        if not old_in and not new_in:
            return []
        if new_in and not old_in:
            return [ShapeMessage(0, "insert", self._key(new), self._project(new))]
        old_key = self._key(old)
        if old_in and not new_in:
            return [ShapeMessage(0, "delete", old_key, self._delete_value(old))]
        new_key = self._key(new)
        if new_key != old_key:
            return [
                ShapeMessage(0, "delete", old_key, self._delete_value(old), key_change_to=new_key),
                ShapeMessage(1, "insert", new_key, self._project(new), key_change_from=old_key),
            ]
        changed = [column for column in self.columns if column in new and new[column] != old.get(column)]
        if not changed:
            return []
        if self.full:
            return [
                ShapeMessage(
                    0, "update", new_key, self._project(new), old_value={column: old.get(column) for column in changed}
                )
            ]
        value = {column: new.get(column) for column in self.key_columns}
        for column in changed:
            value[column] = new[column]
        return [ShapeMessage(0, "update", new_key, value)]
