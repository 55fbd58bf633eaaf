"""Shape routing: a change is offered to the shapes whose equality/IN conjunct it can satisfy and to every
shape without one; no shape that would log a message for it is ever left out (checked against brute force)."""

from __future__ import annotations

import random
import uuid

from appliance.sync.catalog import TableInfo
from appliance.sync.registry import ShapeDefinition
from appliance.sync.replication import Change, ColumnInfo, RelationInfo
from appliance.sync.routing import TableRoutes, routing_key
from appliance.sync.shape import CompiledShape
from tests.sync.test_shape import meta

TABLE = TableInfo(1, "public", "things", (meta("id", "int8", 0), meta("house_id", "uuid"), meta("n", "int4"),
                                          meta("name", "text"), meta("price", "numeric")), ("id",))
RELATION = RelationInfo(1, "public", "things", "f",
                        tuple(ColumnInfo(c.name, 23, c.typname, -1, True) for c in TABLE.columns), ("id",))
HOUSES = [str(uuid.UUID(int=i)) for i in range(1, 9)]


def compiled(where: str | None, *params: str) -> CompiledShape:
    return CompiledShape(ShapeDefinition("public", "things", where=where, params=params), TABLE)


def test_routing_keys_come_from_an_equality_or_in_conjunct_of_a_type_with_exact_equality() -> None:
    assert routing_key(compiled("house_id = $1 AND name IS NULL", HOUSES[0].upper())) == (
        "house_id", frozenset({HOUSES[0]}))
    assert routing_key(compiled("house_id IN ($1, $2) AND n > 1", HOUSES[0], HOUSES[1])) == (
        "house_id", frozenset(HOUSES[:2]))
    assert routing_key(compiled("7 = n")) == ("n", frozenset({"7"}))
    assert routing_key(compiled("n = '+7'")) == ("n", frozenset({"7"}))
    assert routing_key(compiled("name = 'a' OR n = 1")) is None  # a disjunction: no single value
    assert routing_key(compiled("price = 1.5")) is None  # numeric: '1.50' is the same value
    assert routing_key(compiled("n <> 1")) is None
    assert routing_key(compiled(None)) is None


def row(i: int, house: str | None, n: int, name: str) -> dict[str, str | None]:
    return {"id": str(i), "house_id": house, "n": str(n), "name": name, "price": "1.50"}


def test_every_shape_that_would_log_a_change_is_offered_it() -> None:
    rng = random.Random(7)
    wheres = [("house_id = $1", (h,)) for h in HOUSES] + [
        ("house_id IN ($1, $2) AND name <> 'x'", (HOUSES[0], HOUSES[3])),
        ("n = 3", ()), ("name = 'b' AND n > 0", ()), ("n > 5", ()), ("house_id IS NULL", ()), (None, ()),
    ]
    shapes = [compiled(where, *params) for where, params in wheres]
    routes = TableRoutes()
    for index, item in enumerate(shapes):
        routes.add(index, item)
    houses = [*HOUSES, None]
    offered_total = 0
    for i in range(3000):
        old = row(i, rng.choice(houses), rng.randrange(8), rng.choice("abx"))
        new = {**old, **rng.choice([{"house_id": rng.choice(houses)}, {"n": str(rng.randrange(8))},
                                    {"name": rng.choice("abx")}])}
        kind = rng.choice(["insert", "update", "delete", "delete-key-only"])
        change = {
            "insert": Change("insert", RELATION, new=new),
            "update": Change("update", RELATION, old=old, new=new),
            "delete": Change("delete", RELATION, old=old),
            "delete-key-only": Change("delete", RELATION, old={"id": old["id"]}),
        }[kind]
        offered = routes.candidates(change)
        offered_total += len(offered)
        for index, item in enumerate(shapes):
            if item.convert(change):
                assert index in offered, (wheres[index], kind, old, new)
    # And it is an index, not a scan: on average far fewer than all 14 shapes are offered a change.
    assert offered_total / 3000 < 9


def test_a_truncate_goes_to_every_shape_and_removed_shapes_to_none() -> None:
    routes = TableRoutes()
    routes.add("a", compiled("house_id = $1", HOUSES[0]))
    routes.add("b", compiled("n > 1"))
    assert routes.candidates(Change("truncate", RELATION)) == {"a", "b"}
    routes.remove("a")
    assert routes.candidates(Change("insert", RELATION, new=row(1, HOUSES[0], 1, "a"))) == {"b"}
    assert len(routes) == 1
