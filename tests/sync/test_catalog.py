"""Table and column names as Electric reads them, column selection rules, and the electric-schema header."""

from __future__ import annotations

import pytest

from appliance.sync.catalog import (
    CatalogError,
    ColumnMeta,
    TableInfo,
    electric_schema,
    parse_columns,
    parse_relation,
    select_columns,
)


def column(name: str, typname: str = "text", *, pk: int | None = None, typmod: int = -1, **extra: object) -> ColumnMeta:
    fields: dict[str, object] = {
        "name": name,
        "type_oid": 25,
        "typname": typname,
        "element_typname": None,
        "dims": 0,
        "type_modifier": typmod,
        "not_null": pk is not None,
        "pk_index": pk,
        "generated": False,
        **extra,
    }
    return ColumnMeta(**fields)  # type: ignore[arg-type]


TABLE = TableInfo(
    oid=1,
    schema="public",
    table="items",
    primary_key=("id",),
    columns=(
        column("id", "int4", pk=0),
        column("name", "varchar", typmod=24),
        column("tags", "_text", element_typname="text", dims=1),
        column("price", "numeric", typmod=(10 << 16 | 2) + 4),
        column("code", "bpchar", typmod=7),
        column("at", "timestamptz", typmod=3),
        column("total", "int4", generated=True),
    ),
)


def test_relations_fold_unquoted_names_and_keep_quoted_ones() -> None:
    assert parse_relation("items") == ("public", "items")
    assert parse_relation("Items") == ("public", "items")
    assert parse_relation('"Items"') == ("public", "Items")
    assert parse_relation('app."My.Table"') == ("app", "My.Table")
    assert parse_relation('"we""ird"') == ("public", 'we"ird')


@pytest.mark.parametrize("bad", ["a.b.c", "items; drop table x", '"unterminated', "", "foo@bar", '"', "x" * 64])
def test_bad_relations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_relation(bad)


def test_columns_parameter_like_electric() -> None:
    assert parse_columns("id") == ("id",)
    assert parse_columns('"PoT@To",PoTaTo') == ("PoT@To", "potato")
    assert parse_columns('"PoTaTo,sunday",foo') == ("PoTaTo,sunday", "foo")
    assert parse_columns('"fo""o",bar') == ('fo"o', "bar")
    for bad in ("", "foo,", "id;drop"):
        with pytest.raises(ValueError):
            parse_columns(bad)


def test_column_selection_rules_and_messages() -> None:
    assert select_columns(TABLE, ("name", "id")) == ("id", "name")  # table order
    with pytest.raises(CatalogError, match="must include all primary key columns, missing: id"):
        select_columns(TABLE, ("name",))
    with pytest.raises(CatalogError, match="not found on the table: nope"):
        select_columns(TABLE, ("id", "nope"))
    with pytest.raises(CatalogError, match="generated and cannot be included"):
        select_columns(TABLE, ("id", "total"))
    with pytest.raises(CatalogError, match="explicitly listing which columns"):
        select_columns(TABLE, None)


def test_electric_schema_header() -> None:
    schema = electric_schema(TABLE, ("id", "name", "tags", "price", "code", "at"))
    assert schema == {
        "id": {"type": "int4", "pk_index": 0, "not_null": True},
        "name": {"type": "varchar", "max_length": 20},
        "tags": {"type": "text", "dims": 1},
        "price": {"type": "numeric", "precision": 10, "scale": 2},
        "code": {"type": "bpchar", "length": 3},
        "at": {"type": "timestamptz", "precision": 3},
    }


def test_fingerprint_changes_with_what_messages_depend_on() -> None:
    renamed = TableInfo(TABLE.oid, TABLE.schema, TABLE.table, (column("id", "int4", pk=0),), ("id",))
    assert renamed.fingerprint != TABLE.fingerprint
    assert TableInfo.from_json(TABLE.to_json()) == TABLE
    assert TableInfo.from_json(TABLE.to_json()).fingerprint == TABLE.fingerprint
