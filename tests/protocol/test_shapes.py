"""The official TypeScript client (@electric-sql/client) against the embedded engine: what a browser sees."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute, shape_client


def up_to_date(event: dict[str, Any]) -> bool:
    return event["event"] == "up-to-date"


def changes(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in event["messages"] if "key" in m]


def make_items(dsn: str, table: str, rows: int = 3) -> None:
    execute(
        dsn,
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, house_id int, price numeric(10,2),"
        " tags text[], data jsonb, at timestamptz, flag boolean)",
        f"INSERT INTO {table} SELECT g, 'item ' || g, g % 2, g * 1.5, ARRAY['a', 'b/c'], '{{\"n\": 1}}',"
        f" '2024-01-02 03:04:05+00', g % 2 = 0 FROM generate_series(1, {rows}) g",
    )


def key(table: str, id_: int) -> str:
    return f'"public"."{table}"/"{id_}"'


def test_initial_sync_then_live_insert_update_delete(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name)
    try:
        first = client.until(up_to_date)
        assert set(first["rows"]) == {key(table_name, i) for i in (1, 2, 3)}
        row = first["rows"][key(table_name, 2)]
        # The client parsed text output by the electric-schema header: ints, arrays, json, bools (numeric stays text).
        assert row == {
            "id": 2,
            "name": "item 2",
            "house_id": 0,
            "price": "3.00",
            "tags": ["a", "b/c"],
            "data": {"n": 1},
            "at": "2024-01-02 03:04:05+00",
            "flag": True,
        }
        assert [r["offset"] for r in first["responses"]][:1] == ["-1"]
        assert all(r["status"] == 200 for r in first["responses"])

        execute(pg_module.dsn, f"INSERT INTO {table_name} (id, name) VALUES (10, 'ten')")
        inserted = client.until(up_to_date)
        [message] = changes(inserted)
        assert message["headers"]["operation"] == "insert"
        assert isinstance(message["headers"]["txids"][0], int)
        assert message["headers"]["last"] is True
        assert inserted["rows"][key(table_name, 10)]["name"] == "ten"

        execute(pg_module.dsn, f"UPDATE {table_name} SET name = 'renamed' WHERE id = 1")
        updated = client.until(up_to_date)
        [message] = changes(updated)
        assert message["headers"]["operation"] == "update"
        assert message["value"] == {"id": 1, "name": "renamed"}  # replica=default: key + changed columns
        assert updated["rows"][key(table_name, 1)]["name"] == "renamed"
        assert updated["rows"][key(table_name, 1)]["price"] == "1.50"

        execute(pg_module.dsn, f"DELETE FROM {table_name} WHERE id = 3")
        deleted = client.until(up_to_date)
        assert changes(deleted)[0]["headers"]["operation"] == "delete"
        assert key(table_name, 3) not in deleted["rows"]
        assert set(deleted["rows"]) == {key(table_name, i) for i in (1, 2, 10)}
    finally:
        client.close()


def test_where_with_params_moves_rows_in_and_out(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name, rows=6)
    client = shape_client(server, table_name, where="house_id = $1 AND name <> $2", params={"1": "1", "2": "item 5"})
    try:
        first = client.until(up_to_date)
        assert set(first["rows"]) == {key(table_name, 1), key(table_name, 3)}
        execute(pg_module.dsn, f"UPDATE {table_name} SET house_id = 1 WHERE id = 2")  # moves in
        moved_in = client.until(up_to_date)
        assert [m["headers"]["operation"] for m in changes(moved_in)] == ["insert"]
        assert moved_in["rows"][key(table_name, 2)]["name"] == "item 2"
        execute(pg_module.dsn, f"UPDATE {table_name} SET house_id = 0 WHERE id = 1")  # moves out
        moved_out = client.until(up_to_date)
        assert [m["headers"]["operation"] for m in changes(moved_out)] == ["delete"]
        assert set(moved_out["rows"]) == {key(table_name, 2), key(table_name, 3)}
        # A change outside the shape produces nothing: the next batch holds only the row that matches.
        execute(pg_module.dsn, f"INSERT INTO {table_name} (id, name, house_id) VALUES (20, 'x', 0), (21, 'y', 1)")
        batch = client.until(up_to_date)
        assert [m["key"] for m in changes(batch)] == [key(table_name, 21)]
    finally:
        client.close()


def test_columns_subset(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name, columns=["id", "name"])
    try:
        first = client.until(up_to_date)
        assert first["rows"][key(table_name, 1)] == {"id": 1, "name": "item 1"}
        execute(pg_module.dsn, f"UPDATE {table_name} SET price = 99 WHERE id = 1")  # not a selected column
        execute(pg_module.dsn, f"UPDATE {table_name} SET name = 'n' WHERE id = 2")
        batch = client.until(up_to_date)
        assert [m["value"] for m in changes(batch)] == [{"id": 2, "name": "n"}]
    finally:
        client.close()


def test_replica_full_sends_whole_rows_and_old_value(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name, replica="full")
    try:
        client.until(up_to_date)
        execute(pg_module.dsn, f"UPDATE {table_name} SET name = 'new', house_id = 7 WHERE id = 1")
        batch = client.until(up_to_date)
        [message] = changes(batch)
        assert message["value"]["price"] == "1.50" and message["value"]["name"] == "new"
        assert message["old_value"] == {"name": "item 1", "house_id": 1}
        execute(pg_module.dsn, f"DELETE FROM {table_name} WHERE id = 2")
        [deleted] = changes(client.until(up_to_date))
        assert deleted["value"]["name"] == "item 2"  # whole old row
    finally:
        client.close()


def test_primary_key_change_is_delete_then_insert(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name)
    try:
        client.until(up_to_date)
        execute(pg_module.dsn, f"UPDATE {table_name} SET id = 100 WHERE id = 1")
        batch = client.until(up_to_date)
        delete, insert = changes(batch)
        assert (delete["headers"]["operation"], delete["key"]) == ("delete", key(table_name, 1))
        assert (insert["headers"]["operation"], insert["key"]) == ("insert", key(table_name, 100))
        assert insert["headers"]["op_position"] == delete["headers"]["op_position"] + 1
        assert delete["headers"]["key_change_to"] == key(table_name, 100)
        assert "last" not in delete["headers"] and insert["headers"]["last"] is True
        assert set(batch["rows"]) == {key(table_name, i) for i in (2, 3, 100)}
    finally:
        client.close()


def test_delete_shape_makes_the_client_refetch(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name)
    try:
        first = client.until(up_to_date)
        response = httpx.delete(server.url, params={"table": table_name, "secret": server.secret}, timeout=10)
        assert response.status_code == 202
        execute(pg_module.dsn, f"INSERT INTO {table_name} (id, name) VALUES (50, 'after delete')")
        # Every event from the delete on: the 409 may come up-to-date's before the one that holds row 50.
        seen: list[dict[str, Any]] = []
        while not (up_to_date(event := client.next()) and key(table_name, 50) in event["rows"]):
            seen.append(event)
        seen.append(event)
        assert event["handle"] != first["handle"]
        assert set(event["rows"]) == {key(table_name, i) for i in (1, 2, 3, 50)}
        assert 409 in [r["status"] for e in seen for r in e.get("responses", [])] or any(
            m.get("headers", {}).get("control") == "must-refetch" for e in seen for m in e.get("messages", [])
        )
    finally:
        client.close()


def test_truncate_makes_the_client_refetch(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name)
    try:
        first = client.until(up_to_date)
        execute(pg_module.dsn, f"TRUNCATE {table_name}", f"INSERT INTO {table_name} (id, name) VALUES (7, 'seven')")
        after = client.until(lambda e: up_to_date(e) and e["handle"] != first["handle"], what="rotated shape")
        after = (
            after
            if key(table_name, 7) in after["rows"]
            else client.until(lambda e: up_to_date(e) and key(table_name, 7) in e["rows"])
        )
        assert set(after["rows"]) == {key(table_name, 7)}
        statuses = [r["status"] for r in after["responses"]]
        assert 409 in statuses
    finally:
        client.close()


def test_long_poll_times_out_with_200_up_to_date(server: SyncServer, pg_module: PgCluster, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    first = server.get(table=table_name, offset="-1")
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    caught_up = server.get(table=table_name, offset=offset, handle=handle)
    assert "electric-up-to-date" in caught_up.headers
    response = server.get(table=table_name, offset=caught_up.headers["electric-offset"], handle=handle, live="true")
    assert response.status_code == 200
    assert response.json() == [
        {
            "headers": {
                "control": "up-to-date",
                "global_last_seen_lsn": response.json()[0]["headers"]["global_last_seen_lsn"],
            }
        }
    ]
    assert response.headers["electric-has-data"] == "false"
    assert "electric-up-to-date" in response.headers
    assert int(response.headers["electric-cursor"]) > 0
    assert response.headers["cache-control"] == "public, max-age=5, stale-while-revalidate=5"


def test_sse_delivers_live_changes(pg_module: PgCluster, server: SyncServer, table_name: str) -> None:
    make_items(pg_module.dsn, table_name)
    client = shape_client(server, table_name, liveSse=True)
    try:
        client.until(up_to_date)
        for i in range(3):
            execute(pg_module.dsn, f"INSERT INTO {table_name} (id, name) VALUES ({200 + i}, 'sse {i}')")
            client.until(lambda e, i=i: up_to_date(e) and key(table_name, 200 + i) in e["rows"], what=f"sse {i}")
        client.send("responses")
        event = client.until(lambda e: e["event"] == "responses")
        # Every change arrived on one open SSE request (it has not ended, so it is not in the list yet),
        # so no further live long-poll was made.
        assert not [r for r in event["responses"] if r["live"] == "true" and r["sse"] != "true"]
    finally:
        client.close()
