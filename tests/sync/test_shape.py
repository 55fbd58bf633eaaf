"""How one row change becomes a shape's messages: where filtering, move-in/out, key changes, replica modes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sync import messages
from appliance.sync.catalog import ColumnMeta, TableInfo
from appliance.sync.engine import full_xid, visible_in
from appliance.sync.registry import ShapeDefinition, SnapshotInfo
from appliance.sync.replication import Change, ColumnInfo, RelationInfo
from appliance.sync.shape import CompiledShape


def meta(name: str, typname: str, pk: int | None = None) -> ColumnMeta:
    return ColumnMeta(name, 23, typname, None, 0, -1, pk is not None, pk, False)


TABLE = TableInfo(
    1, "public", "items", (meta("id", "int4", 0), meta("house_id", "int4"), meta("name", "text")), ("id",)
)
RELATION = RelationInfo(
    1,
    "public",
    "items",
    "f",
    tuple(ColumnInfo(c.name, 23, c.typname, -1, True) for c in TABLE.columns),
    ("id",),
)


def row(id_: int, house: int, name: str) -> dict[str, str | None]:
    return {"id": str(id_), "house_id": str(house), "name": name}


def shape(**definition: object) -> CompiledShape:
    return CompiledShape(ShapeDefinition("public", "items", **definition), TABLE)  # type: ignore[arg-type]


def update(old: dict[str, str | None], new: dict[str, str | None]) -> Change:
    return Change("update", RELATION, old=old, new=new)


def summary(shape: CompiledShape, change: Change) -> list[tuple[str, str, dict[str, str | None], int]]:
    return [(m.operation, m.key.rsplit("/", 1)[1], m.value, m.op_delta) for m in shape.convert(change)]


def test_inserts_and_deletes_are_filtered_by_where() -> None:
    house_1 = shape(where="house_id = $1", params=("1",))
    assert summary(house_1, Change("insert", RELATION, new=row(1, 1, "a"))) == [("insert", '"1"', row(1, 1, "a"), 0)]
    assert house_1.convert(Change("insert", RELATION, new=row(2, 2, "b"))) == []
    assert summary(house_1, Change("delete", RELATION, old=row(1, 1, "a"))) == [("delete", '"1"', {"id": "1"}, 0)]
    assert house_1.convert(Change("delete", RELATION, old=row(2, 2, "b"))) == []


def test_updates_move_rows_in_and_out_of_the_shape() -> None:
    house_1 = shape(where="house_id = $1", params=("1",))
    assert summary(house_1, update(row(1, 2, "a"), row(1, 1, "a"))) == [("insert", '"1"', row(1, 1, "a"), 0)]
    assert summary(house_1, update(row(1, 1, "a"), row(1, 2, "a"))) == [("delete", '"1"', {"id": "1"}, 0)]
    assert house_1.convert(update(row(1, 2, "a"), row(1, 3, "a"))) == []


def test_update_carries_key_and_changed_columns_or_whole_row_with_old_value() -> None:
    default = shape()
    assert summary(default, update(row(1, 1, "a"), row(1, 1, "b"))) == [("update", '"1"', {"id": "1", "name": "b"}, 0)]
    [full] = shape(replica="full").convert(update(row(1, 1, "a"), row(1, 1, "b")))
    assert full.value == row(1, 1, "b") and full.old_value == {"name": "a"}


def test_updates_changing_nothing_selected_are_dropped() -> None:
    assert shape().convert(update(row(1, 1, "a"), row(1, 1, "a"))) == []
    assert shape(columns=("id", "name")).convert(update(row(1, 1, "a"), row(1, 5, "a"))) == []


def test_key_change_is_a_delete_and_an_insert_one_op_apart() -> None:
    delete, insert = shape().convert(update(row(1, 1, "a"), row(9, 1, "a")))
    assert (delete.operation, delete.op_delta, delete.key_change_to) == ("delete", 0, insert.key)
    assert (insert.operation, insert.op_delta, insert.key_change_from) == ("insert", 1, delete.key)
    assert insert.value == row(9, 1, "a")


def test_message_headers() -> None:
    [message] = shape().convert(Change("insert", RELATION, new=row(1, 1, "a")))
    data = message.to_json(["public", "items"], lsn=100, op_position=4, xid=7, last=True)
    assert data["headers"] == {
        "operation": "insert",
        "relation": ["public", "items"],
        "lsn": "100",
        "op_position": 4,
        "txids": [7],
        "last": True,
    }


texts = st.one_of(st.none(), st.text(), st.sampled_from(['a"b', "a\\b", "\x00\x1f\u2028", "é/日本", "/"]))


@settings(max_examples=300, deadline=None)
@given(
    old_name=texts,
    new_name=texts,
    new_id=st.sampled_from([1, 9]),
    replica=st.sampled_from(["default", "full"]),
    kind=st.sampled_from(["insert", "update", "delete"]),
    lsn=st.integers(1, 2**64 - 1),
    op=st.integers(0, 2**32),
    xid=st.integers(0, 2**32 - 1),
    last=st.booleans(),
)
def test_encoded_messages_are_byte_for_byte_what_the_json_encoder_writes(
    old_name: str | None,
    new_name: str | None,
    new_id: int,
    replica: str,
    kind: str,
    lsn: int,
    op: int,
    xid: int,
    last: bool,
) -> None:
    compiled = shape(replica=replica)
    old = {"id": "1", "house_id": "1", "name": old_name}
    new = {"id": str(new_id), "house_id": "1", "name": new_name}
    change = {"insert": Change("insert", RELATION, new=new), "delete": Change("delete", RELATION, old=old),
              "update": update(old, new)}[kind]
    for message in compiled.convert(change):
        assert message.encode(compiled.relation_json, str(lsn), op, str(xid), last) == messages.encode(
            message.to_json(compiled.relation, lsn, op, xid, last)
        )


def test_variants_of_one_shape_share_what_they_have_in_common() -> None:
    """Thousands of shapes are mostly a few wheres over one table with other columns or params: what they have in
    common is one object, not one per shape (memory, and a change reaching ten variants finds it in cache)."""
    narrow = shape(where="house_id = $1", params=("7",), columns=("id", "name"))
    same_table = TableInfo(TABLE.oid, TABLE.schema, TABLE.table, TABLE.columns, TABLE.primary_key)
    wide = CompiledShape(ShapeDefinition("public", "items", where="house_id = $1", params=("7",)), same_table)
    other_house = shape(where="house_id = $1", params=("8",), columns=("id", "name"))
    assert narrow.where is wide.where and narrow.where is not other_house.where
    assert narrow.table is wide.table  # an equal table from the catalog, one object
    assert narrow.columns is other_house.columns and narrow.relation_json is wide.relation_json
    assert narrow.convert(Change("insert", RELATION, new=row(1, 7, "a")))[0].value == {"id": "1", "name": "a"}
    assert wide.convert(Change("insert", RELATION, new=row(1, 7, "a")))[0].value == row(1, 7, "a")
    assert other_house.convert(Change("insert", RELATION, new=row(1, 7, "a"))) == []


def test_snapshot_rows_carry_only_operation_and_relation() -> None:
    assert shape().snapshot_message(row(1, 1, "a")) == (
        b'{"key":"\\"public\\".\\"items\\"/\\"1\\"","value":{"id":"1","house_id":"1","name":"a"},'
        b'"headers":{"operation":"insert","relation":["public","items"]}}'
    )


def test_xid_visibility_in_a_snapshot_across_epochs() -> None:
    snapshot = SnapshotInfo(xmin=100, xmax=105, xip_list=(102,))
    assert visible_in(snapshot, 99) and visible_in(snapshot, 101) and visible_in(snapshot, 104)
    assert not visible_in(snapshot, 102) and not visible_in(snapshot, 105) and not visible_in(snapshot, 200)
    epoch = 3 << 32
    assert full_xid(10, epoch + 20) == epoch + 10
    assert full_xid(0xFFFFFFF0, epoch + 5) == epoch - 16  # before the wraparound: the previous epoch
    assert visible_in(SnapshotInfo(epoch + 5, epoch + 10, ()), 0xFFFFFFF0)
