"""Subset snapshots over HTTP (GET with `subset__*`, POST with a JSON body) against a real Postgres and a real
`appliance sync serve`: what they return, that they stay inside their shape, and every bad input a 4xx."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from appliance.sync.snapshot import CHECK_IDLE_AFTER_S
from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute

ROWS = 200


@pytest.fixture(scope="module")
def server(pg_module: PgCluster) -> Iterator[SyncServer]:
    execute(
        pg_module.dsn,
        "CREATE TABLE things (id bigint PRIMARY KEY, house_id int NOT NULL, rank int, title text, secret text)",
        f"INSERT INTO things SELECT i, i % 4, {ROWS} - i, 'thing ' || i, 'hidden ' || i "
        f"FROM generate_series(1, {ROWS}) AS i",
    )
    sync = SyncServer(pg_module.dsn, long_poll_ms=1000).start()
    try:
        yield sync
    finally:
        sync.remove()


SHAPE = {"table": "things", "where": "house_id = $1", "params[1]": "1", "columns": "id,house_id,rank,title"}


def subset_get(server: SyncServer, **subset: Any) -> httpx.Response:
    params = {**SHAPE, "offset": "-1", **{f"subset__{k}": v for k, v in subset.items()}}
    return server.get(**params)


def subset_post(server: SyncServer, body: Any, **query: str) -> httpx.Response:
    params = {**SHAPE, "offset": "-1", "secret": server.secret, **query}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url, params=params, content=content, headers={"content-type": "application/json"},
                      timeout=30)


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [int(row["value"]["id"]) for row in response.json()["data"]]


def subset_errors(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["message"] == "Invalid request"
    return body["errors"]["subset"]


def test_a_subset_is_ordered_limited_and_inside_the_shape(server: SyncServer) -> None:
    response = subset_get(server, where="rank < $1", params=json.dumps({"1": "100"}), order_by="rank DESC",
                          limit="5", offset="2")
    # house 1 and rank < 100: ids 101..197 step 4 (rank = 200 - id); by rank descending = by id ascending.
    assert ids(response) == [109, 113, 117, 121, 125]
    body = response.json()
    assert set(body) == {"metadata", "data"}
    metadata = body["metadata"]
    assert set(metadata) == {"xmin", "xmax", "xip_list", "database_lsn", "snapshot_mark"}
    assert int(metadata["xmin"]) <= int(metadata["xmax"]) and int(metadata["database_lsn"]) > 0
    assert isinstance(metadata["snapshot_mark"], int)
    row = body["data"][0]
    assert row["headers"] == {"operation": "insert", "relation": ["public", "things"],
                              "snapshot_mark": metadata["snapshot_mark"]}
    assert set(row["value"]) == {"id", "house_id", "rank", "title"}  # the shape's columns, no more
    assert response.headers["electric-snapshot"] == "true"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["electric-handle"]
    assert json.loads(response.headers["electric-schema"])["id"] == {"type": "int8", "pk_index": 0,
                                                                     "not_null": True}


def test_post_takes_the_subset_from_the_body_at_the_top_or_under_subset(server: SyncServer) -> None:
    wanted = {"where": "id <= $1", "params": {"1": "21"}, "order_by": "id", "limit": 3}
    assert ids(subset_post(server, wanted)) == [1, 5, 9]
    assert ids(subset_post(server, {"subset": {**wanted, "offset": 1}})) == [5, 9, 13]


def test_bigint_params_as_strings_and_json_numbers(server: SyncServer) -> None:
    big = str(2**62)
    assert ids(subset_post(server, {"where": "id < $1", "params": {"1": big}, "order_by": "id", "limit": 1})) == [1]
    assert ids(subset_post(server, {"where": "id = $1", "params": {"1": 5}})) == [5]


def test_the_subset_never_reaches_outside_the_shape(server: SyncServer) -> None:
    # A subset where that matches other houses' rows gets none of them: it is ANDed with the shape's.
    assert ids(subset_get(server, where="house_id = 2 OR true", order_by="id", limit="3")) == [1, 5, 9]
    # Columns the shape does not select cannot be filtered or ordered on, so they cannot be probed.
    assert "secret" in subset_errors(subset_get(server, where="secret = 'hidden 5'"))["where"][0]
    assert "unknown reference secret" in subset_errors(subset_get(server, order_by="secret"))["order_by"][0]
    # SQL cannot ride in: the order_by is rebuilt from column names, the where is bound with placeholders.
    assert "order_by" in subset_errors(subset_get(server, order_by="id; DROP TABLE things"))
    assert "order_by" in subset_errors(subset_get(server, order_by="(SELECT secret FROM things LIMIT 1)"))
    assert "where" in subset_errors(subset_get(server, where="id IN (SELECT id FROM things)"))
    assert ids(subset_get(server, where="id = 1", order_by="id")) == [1]


@pytest.mark.parametrize(("subset", "errors"), [
    ({"limit": "0", "order_by": "id"}, {"limit": ["must be greater than 0"]}),
    ({"limit": "x", "order_by": "id"}, {"limit": ["is invalid"]}),
    ({"offset": "-1", "order_by": "id"}, {"offset": ["must be greater than or equal to 0"]}),
    ({"limit": "5"}, {"order_by": ["order_by is required when limit or offset is present"]}),
    ({"where": "id = $1", "params": "[1]"}, {"params": ["params must be a JSON object"]}),
    ({"where": "id = $1", "params": "{"}, {"params": ["params must be valid JSON"]}),
    ({"where": "id = $1", "params": '{"2": "1"}'}, {"params": ["params must be numbered $1..$n without gaps"]}),
    ({"where": "1 x 1"}, {"where": ['At location 17: syntax error at or near "x"']}),
    ({"order_by": "id DESC,"}, {"order_by": ["syntax error at end of input"]}),
    ({"order_by": "lower(title)"}, {"order_by": [
        "order_by may only name columns of the shape's table (no expressions, USING or qualified names)"]}),
    ({"bogus": "1"}, {"bogus": ["is not a subset parameter"]}),
])
def test_bad_subsets_are_400_naming_the_parameter(server: SyncServer, subset: dict[str, str],
                                                  errors: dict[str, list[str]]) -> None:
    assert subset_errors(subset_get(server, **subset)) == errors


def test_bad_post_bodies(server: SyncServer) -> None:
    not_json = subset_post(server, b"{not json")
    assert not_json.status_code == 400 and not_json.json()["error"] == "Invalid JSON in request body"
    not_object = subset_post(server, [1, 2])
    assert not_object.status_code == 400 and not_object.json() == {"error": "Request body must be a JSON object"}
    too_big = subset_post(server, {"where": "title = $1", "params": {"1": "x" * 70_000}})
    assert too_big.status_code == 413
    wrong_secret = subset_post(server, {"where": "id = 1"}, secret="wrong")
    assert wrong_secret.status_code == 401
    assert ids(subset_post(server, {"where": "id = 1"})) == [1]  # still serving


def test_a_subset_with_a_stale_handle_is_409_like_any_shape_request(server: SyncServer) -> None:
    current = server.get(**SHAPE, offset="-1").headers["electric-handle"]
    response = server.get(**SHAPE, offset="0_0", handle="0000000000000000-1", subset__where="id = 1")
    assert response.status_code == 409
    assert response.headers["electric-handle"] == current


def test_the_resume_offset_is_the_log_before_the_snapshot(server: SyncServer, pg_module: PgCluster) -> None:
    first = server.get(**SHAPE, offset="-1")
    handle = first.headers["electric-handle"]
    subset = server.get(**SHAPE, offset="-1", subset__where="id = 1")
    assert subset.headers["electric-handle"] == handle
    # A change committed after the subset arrives from the log after the offset the subset named.
    with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
        conn.execute("UPDATE things SET title = 'changed' WHERE id = 1")
    response = server.get(**SHAPE, offset=subset.headers["electric-offset"], handle=handle, live="true")
    updates = [m for m in response.json() if m.get("headers", {}).get("operation") == "update"]
    assert [m["value"]["title"] for m in updates] == ["changed"]


def test_delete_is_405_unless_enabled(server: SyncServer) -> None:
    response = httpx.delete(server.url, params={"table": "things", "secret": server.secret})
    assert response.status_code == 405
    assert ids(subset_get(server, where="id = 1")) == [1]  # the shape is still there


def test_kept_connections_closed_by_the_server_are_replaced(server: SyncServer, pg_module: PgCluster) -> None:
    for _ in range(3):
        assert ids(subset_get(server, where="id = 1")) == [1]
    # What a Postgres restart does to the engine's kept subset connections (its replication stays).
    with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                              "backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
    assert killed is not None and killed[0] >= 1
    assert ids(subset_get(server, where="id = 5")) == [5]


def test_a_subset_from_a_real_offset_leaves_the_client_where_it_was(server: SyncServer, pg_module: PgCluster) -> None:
    first = server.get(**SHAPE, offset="-1")
    handle, offset = first.headers["electric-handle"], first.headers["electric-offset"]
    with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
        conn.execute("UPDATE things SET title = 'unread' WHERE id = 5")
    # The log has moved on; the client has not read it yet. Its subset must not move it past that change.
    for _ in range(100):
        tip = server.get(**SHAPE, offset=offset, handle=handle).headers["electric-offset"]
        if tip != offset:
            break
        time.sleep(0.05)
    assert tip != offset  # the log did move on: the check below can fail
    subset = server.get(**SHAPE, offset=offset, handle=handle, subset__where="id = 1")
    assert subset.headers["electric-offset"] == offset


def test_kept_connections_serve_new_shapes_after_snapshots_and_server_restarts(
    server: SyncServer, pg_module: PgCluster
) -> None:
    """Creating a shape reads the catalog and takes its snapshot on kept connections: a snapshot (which reads
    every column as text) must not leave a connection that reads catalog booleans as text, and a connection
    the server closed meanwhile is replaced."""
    for name in ("kept_a", "kept_b", "kept_c"):
        execute(pg_module.dsn, f"CREATE TABLE {name} (id bigint PRIMARY KEY, flag bool, n numeric)",
                f"INSERT INTO {name} VALUES (1, true, 1.5)")
    first = server.get(table="kept_a", offset="-1")
    assert first.status_code == 200, first.text
    assert [m["value"] for m in first.json() if "value" in m] == [{"id": "1", "flag": "t", "n": "1.5"}]
    # The next creation's catalog read is on the connection that snapshot gave back.
    second = server.get(table="kept_b", offset="-1")
    assert second.status_code == 200, second.text
    with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                     " AND pid <> pg_backend_pid()")
    time.sleep(CHECK_IDLE_AFTER_S + 0.2)  # idle that long, a kept connection is checked before use
    third = server.get(table="kept_c", offset="-1")
    assert third.status_code == 200, third.text
