"""Subset snapshots with the official @electric-sql/client: `requestSnapshot` on a `log: 'changes_only'`
stream (the rows join the stream, live changes follow), `fetchSnapshot` by GET and POST, BigInt params, an
update committed concurrently with the snapshot arriving exactly once, and Postgres's parser errors."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.pg import PgCluster
from tests.support.sync import NodeProcess, SyncServer, execute, shape_client


def make_things(dsn: str, table: str, rows: int = 40) -> None:
    execute(
        dsn,
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, house_id int NOT NULL, rank int NOT NULL, title text)",
        f"INSERT INTO {table} SELECT g, g % 2, g, 'thing ' || g FROM generate_series(1, {rows}) g",
    )


def key(table: str, id_: int) -> str:
    return f'"public"."{table}"/"{id_}"'


def event(name: str) -> Any:
    return lambda e: e["event"] == name


def up_to_date_with(check: Any) -> Any:
    return lambda e: e["event"] == "up-to-date" and check(e["rows"])


def on_demand(server: SyncServer, table: str, **options: Any) -> NodeProcess:
    """A changes-only stream over house 1, started at `now`, as TanStack DB's on-demand sync starts one."""
    return shape_client(server, table, where="house_id = 1", log="changes_only", offset="now", **options)


@pytest.mark.parametrize("live_sse", [False, True], ids=["long-poll", "sse"])
def test_request_snapshot_loads_only_its_rows_then_live_changes_follow(
    pg_module: PgCluster, server: SyncServer, table_name: str, live_sse: bool
) -> None:
    make_things(pg_module.dsn, table_name)
    client = on_demand(server, table_name, liveSse=live_sse)
    try:
        assert client.until(event("up-to-date"))["rows"] == {}  # changes only: nothing until asked
        client.send('{"request": {"where": "rank < $1", "params": {"1": "bigint:20"}, "orderBy": "rank DESC", '
                    '"limit": 3}}')
        snapshot = client.until(event("snapshot"))
        wanted = [key(table_name, i) for i in (19, 17, 15)]  # house 1 is the odd ids
        assert snapshot["keys"] == wanted
        assert sorted(snapshot["rows"]) == sorted(wanted)
        assert {"xmin", "xmax", "xip_list", "database_lsn", "snapshot_mark"} <= set(snapshot["metadata"])

        execute(pg_module.dsn,
                f"INSERT INTO {table_name} VALUES (101, 1, 5, 'new')",
                f"UPDATE {table_name} SET title = 'renamed' WHERE id = 17",
                f"DELETE FROM {table_name} WHERE id = 15",
                f"INSERT INTO {table_name} VALUES (102, 0, 5, 'other house')")
        final = client.until(up_to_date_with(lambda rows: key(table_name, 101) in rows
                                             and key(table_name, 15) not in rows), what="live changes")
        assert set(final["rows"]) == {key(table_name, 19), key(table_name, 17), key(table_name, 101)}
        assert final["rows"][key(table_name, 17)]["title"] == "renamed"
    finally:
        client.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_fetch_snapshot_returns_rows_without_joining_the_stream(
    pg_module: PgCluster, server: SyncServer, table_name: str, method: str
) -> None:
    make_things(pg_module.dsn, table_name)
    client = on_demand(server, table_name, subsetMethod=method)
    try:
        client.until(event("up-to-date"))
        client.send('{"fetch": {"where": "id = $1 OR id = $2", "params": {"1": "bigint:3", "2": "5"}, '
                    '"orderBy": "id"}}')
        fetched = client.until(event("fetched"))
        assert [m["key"] for m in fetched["data"]] == [key(table_name, 3), key(table_name, 5)]
        # int8 arrives as a BigInt (reported as its digits), int4 as a number: the schema header was read.
        assert fetched["data"][0]["value"] == {"id": "3", "house_id": 1, "rank": 3, "title": "thing 3"}
        assert fetched["data"][0]["headers"]["snapshot_mark"] == fetched["metadata"]["snapshot_mark"]
        client.send("responses")
        requests = client.until(event("responses"))["responses"]
        assert all(r["status"] == 200 for r in requests)
    finally:
        client.close()


def test_an_update_committed_while_the_snapshot_is_taken_arrives_exactly_once(
    pg_module: PgCluster, server: SyncServer, table_name: str
) -> None:
    make_things(pg_module.dsn, table_name)
    client = on_demand(server, table_name, reportChanges=True)
    writer = psycopg.connect(pg_module.dsn)
    try:
        client.until(event("up-to-date"))
        # In flight when the snapshot is taken: the snapshot sees the old title, and its xids say the writer's
        # transaction is not in it (in xip_list, or at or past xmax, which is one past the last *completed*
        # xid), so the client must take the update when the log delivers it.
        writer.execute(f"UPDATE {table_name} SET title = 'concurrent' WHERE id = 7")
        xid = writer.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
        client.send('{"request": {"where": "id <= 9", "orderBy": "id"}}')
        snapshot = client.until(event("snapshot"))
        metadata = snapshot["metadata"]
        assert xid in metadata["xip_list"] or int(xid) >= int(metadata["xmax"]), (xid, metadata)
        assert snapshot["rows"][key(table_name, 7)]["title"] == "thing 7"
        writer.commit()
        row = key(table_name, 7)
        updates, final = 0, None
        while final is None:
            seen = client.next()
            if seen["event"] == "change" and seen["key"] == row and seen["headers"]["operation"] == "update":
                updates += 1
            if seen["event"] == "up-to-date" and seen["rows"][row]["title"] == "concurrent":
                final = seen
        assert len(final["rows"]) == 5
        # A later round trip brings no second copy of it.
        execute(pg_module.dsn, f"UPDATE {table_name} SET title = 'later' WHERE id = 9")
        while (seen := client.next())["event"] != "up-to-date" or seen["rows"][key(table_name, 9)]["title"] != "later":
            if seen["event"] == "change" and seen["key"] == row:
                updates += 1
        assert updates == 1
    finally:
        writer.close()
        client.close()


def test_after_a_must_refetch_the_shape_asks_for_its_subsets_again(
    pg_module: PgCluster, server: SyncServer, table_name: str
) -> None:
    """A changes-only Shape holds only the rows its subsets loaded; a must-refetch empties it, and the client
    (Shape) asks the new shape for the same subsets once it is up to date: the rows come back, from the new
    handle, and live changes go on."""
    make_things(pg_module.dsn, table_name)
    client = on_demand(server, table_name, shape=True)
    try:
        first = client.until(event("up-to-date"))
        client.send('{"shapeRequest": {"where": "rank < $1", "params": {"1": "10"}, "orderBy": "rank"}}')
        loaded = client.until(event("shape-snapshot"))
        assert sorted(loaded["rows"], key=int) == ["1", "3", "5", "7", "9"]
        client.send("responses")
        client.until(event("responses"))  # what was asked so far is not what is checked below

        deleted = httpx.delete(server.url, params={"handle": first["handle"], "secret": server.secret}, timeout=10)
        assert deleted.status_code == 202, deleted.text
        # Committed while the client refetches: the new shape holds it in its log (if the engine made the shape
        # first) or its subset brings it (if not); either way the Shape ends with it and the re-asked subset.
        execute(pg_module.dsn, f"INSERT INTO {table_name} VALUES (201, 1, 2, 'while refetching')")

        wanted = {"1", "3", "5", "7", "9", "201"}
        asked: list[dict[str, Any]] = []  # every request from here on (each up-to-date reports those before it)
        while (seen := client.next(timeout=30))["event"] != "shape-rows" or not wanted <= set(seen["rows"]):
            asked += seen.get("responses", [])
        assert sorted(seen["rows"], key=int) == ["1", "3", "5", "7", "9", "201"]
        # The subset asked again of the new shape (the rows above may show before that request has been made).
        deadline = time.monotonic() + 30
        while not (again := [r for r in asked if r["subsetWhere"] == "rank < $1"]) and time.monotonic() < deadline:
            client.send("responses")
            asked += client.until(event("responses"))["responses"]
            time.sleep(0.05)
        assert any(r["status"] == 409 for r in asked), asked  # the must-refetch
        assert again and all(r["status"] == 200 and r["handle"] not in (None, first["handle"]) for r in again), asked

        execute(pg_module.dsn, f"UPDATE {table_name} SET title = 'renamed' WHERE id = 3")
        client.until(lambda e: e["event"] == "shape-rows" and e["rows"].get("3", {}).get("title") == "renamed",
                     what="a live update after the refetch")
    finally:
        client.close()


def test_an_invalid_where_is_postgres_parser_error_in_electrics_words(
    pg_module: PgCluster, server: SyncServer, table_name: str
) -> None:
    make_things(pg_module.dsn, table_name)
    client = shape_client(server, table_name, where="1 x 1")
    try:
        error = client.until(event("error"))
        assert error["status"] == 400
        assert error["json"] == {"message": "Invalid request",
                                 "errors": {"where": ['At location 17: syntax error at or near "x"']}}
    finally:
        client.close()
