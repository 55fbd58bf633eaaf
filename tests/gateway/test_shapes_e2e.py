"""End to end with the official @electric-sql/client (and TanStack DB's awaitTxId) pointed at the gateway with
a bearer token, the embedded sync engine behind it: a member sees exactly their houses' rows, and follows
membership changes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway.conftest import Stack, build_stack
from tests.support.pg import PgCluster
from tests.support.stack import sync_server
from tests.support.sync import PROTOCOL_DIR, NodeProcess, require_node_modules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e2e(pg_module: PgCluster) -> Iterator[Stack]:
    require_node_modules()
    for stack in build_stack(pg_module):
        with sync_server(stack.env):
            yield stack


def client(stack: Stack, table: str, principal: uuid.UUID, mode: str = "shape", **options: Any) -> NodeProcess:
    return NodeProcess("../gateway/gateway_client.mjs", {
        "mode": mode, "url": f"{stack.url}/api/shapes/{table}", "token": stack.env.token(principal),
        "protocolDir": str(PROTOCOL_DIR), **options,
    })


def up_to_date(event: dict[str, Any]) -> bool:
    return event["event"] == "up-to-date"


def house_ids(event: dict[str, Any]) -> set[str]:
    return {row["id"] for row in event["rows"]}


def test_a_member_sees_exactly_their_houses(e2e: Stack) -> None:
    alice, bob = e2e.user(), e2e.user()
    mine = {alice.house("a1"), alice.house("a2")}
    theirs = bob.house("b1")
    alice.thread(next(iter(mine)))
    bob.thread(theirs)
    houses = client(e2e, "houses", alice.id)
    threads = client(e2e, "threads", alice.id)
    try:
        assert house_ids(houses.until(up_to_date)) == mine
        first = threads.until(up_to_date)
        assert {row["house_id"] for row in first["rows"]} == {next(iter(mine))}
    finally:
        houses.close()
        threads.close()


def test_a_write_returns_a_txid_that_await_txid_resolves(e2e: Stack) -> None:
    alice = e2e.user()
    house = alice.house()
    collection = client(e2e, "threads", alice.id, mode="txid")
    try:
        assert collection.until(lambda e: e["event"] == "ready", timeout=30)["ids"] == []
        created = alice.post("/api/threads", {"house_id": house, "title": "optimistic"}).json()
        collection.send(str(created["txid"]))
        resolved = collection.until(lambda e: e["event"] == "txid", timeout=30)
        assert resolved["resolved"] is True, resolved
        assert resolved["ids"] == [created["data"]["id"]]
    finally:
        collection.close()


def test_membership_changes_add_and_remove_a_house(e2e: Stack) -> None:
    owner, guest = e2e.user(), e2e.user()
    shared = owner.house("shared")
    own = guest.house("own")
    houses = client(e2e, "houses", guest.id)
    try:
        assert house_ids(houses.until(up_to_date, timeout=30)) == {own}
        member = owner.post("/api/members", {"house_id": shared, "principal_id": str(guest.id)}).json()["data"]
        houses.until(lambda e: up_to_date(e) and house_ids(e) == {own, shared}, timeout=30,
                     what="the shared house to appear")
        owner.delete(f"/api/members/{member['id']}")
        houses.until(lambda e: up_to_date(e) and house_ids(e) == {own}, timeout=30,
                     what="the shared house to disappear")
    finally:
        houses.close()


def _subset_titles(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(row["value"]["title"] for row in response.json()["data"])


def test_subsets_pass_through_and_stay_inside_the_callers_houses(e2e: Stack) -> None:
    alice, bob = e2e.user(), e2e.user()
    mine, theirs = alice.house("mine"), bob.house("theirs")
    for title in ("a", "b", "c"):
        alice.thread(mine, title)
    bob.thread(theirs, "bobs")
    shape = {"offset": "-1", "log": "changes_only"}
    # A subset narrows the gateway's shape...
    narrowed = alice.get("/api/shapes/threads", params={**shape, "subset__where": "title <> $1",
                                                         "subset__params": '{"1": "a"}',
                                                         "subset__order_by": "title", "subset__limit": "5"})
    assert _subset_titles(narrowed) == ["b", "c"]
    # ...and can never widen it: a subset naming another house's rows gets none of them, by GET or POST.
    wider = {"subset__where": f"house_id = '{theirs}' OR true", "subset__order_by": "title"}
    assert _subset_titles(alice.get("/api/shapes/threads", params={**shape, **wider})) == ["a", "b", "c"]
    body = {"where": f"house_id = '{theirs}' OR true", "table": "houses", "columns": "id",
            "subset": {"where": f"house_id = '{theirs}' OR title = 'bobs' OR true"}}
    posted = alice.http.post("/api/shapes/threads", params=shape, json=body)
    assert _subset_titles(posted) == ["a", "b", "c"]
    # The shape-defining parameters stay the gateway's; a column the shape lacks is refused (the engine's
    # tests check a column of the table the shape does not select: tests/sync/test_subsets.py).
    assert alice.get("/api/shapes/threads", params={**shape, "where": "true"}).status_code == 400
    assert alice.get("/api/shapes/threads", params={**shape, "subset__where": "x" * 9000}).status_code == 400
    unknown = alice.get("/api/shapes/houses", params={**shape, "subset__where": "no_such_column = 1"})
    assert unknown.status_code == 400 and "no_such_column" in unknown.text
    # Without a token nothing at all.
    assert e2e.anonymous().get("/api/shapes/threads", params={**shape, **wider}).status_code == 401
    assert e2e.anonymous().post("/api/shapes/threads", params=shape, json=body).status_code == 401


def test_a_tanstack_live_query_on_demand_through_the_gateway_sees_only_the_members_rows(e2e: Stack) -> None:
    alice, bob = e2e.user(), e2e.user()
    mine, theirs = alice.house("mine"), bob.house("theirs")
    for title in ("a", "b", "c", "d", "e"):
        alice.thread(mine, title)
    bob.thread(theirs, "zz-bobs")  # would top the query if a subset could reach it
    query = NodeProcess("live_query.mjs", {
        "url": f"{e2e.url}/api/shapes/threads", "token": e2e.env.token(alice.id), "syncMode": "on-demand",
        "where": {"column": "title", "op": "gt", "value": "a"}, "orderBy": {"column": "title", "direction": "desc"},
        "limit": 2,
    })
    try:
        ready = query.until(lambda e: e["event"] == "rows" and len(e["rows"]) == 2, what="the first rows")
        assert [row["title"] for row in ready["rows"]] == ["e", "d"]
        assert any(r["subset"] for r in ready["requests"])
        alice.thread(mine, "f")
        bob.thread(theirs, "zzz-bobs-again")
        later = query.until(lambda e: e["event"] == "rows" and e["rows"][0]["title"] == "f", what="a new thread")
        assert [row["title"] for row in later["rows"]] == ["f", "e"]
    finally:
        query.close()
