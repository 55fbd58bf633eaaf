"""Bad input to the sync engine's HTTP API: every malformed request is a clear 4xx and the server stays
healthy (real Postgres, real `appliance sync serve`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute


@pytest.fixture(scope="module")
def server(pg_module: PgCluster) -> Iterator[SyncServer]:
    execute(
        pg_module.dsn,
        "CREATE TABLE items (id int PRIMARY KEY, name text, house_id int)",
        "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)",
    )
    sync = SyncServer(pg_module.dsn, long_poll_ms=1000, allow_delete=True).start()
    try:
        yield sync
    finally:
        sync.stop()
        sync.remove()


def errors_of(response: httpx.Response) -> dict[str, list[str]]:
    body = response.json()
    assert body["message"] == "Invalid request", body
    return body["errors"]


def assert_still_serving(server: SyncServer, pg: PgCluster) -> None:
    assert server.healthy()
    response = server.get(table="items", offset="-1")
    assert response.status_code == 200
    assert {m["value"]["id"] for m in response.json() if "key" in m} >= {"1", "2"}


@pytest.mark.parametrize("offset", ["abc", "1_", "_1", "-2", "0_-1", "1_2_3", "10", "1_2 ", "01_1", "0_infinity"])
def test_malformed_offsets_are_400(server: SyncServer, pg_module: PgCluster, offset: str) -> None:
    response = server.get(table="items", offset=offset, handle="h")
    assert response.status_code == 400
    assert errors_of(response) == {"offset": ["has invalid format"]}
    assert response.headers["cache-control"] == "no-store"


def test_offset_beyond_the_log_is_400_after_a_short_wait(server: SyncServer, pg_module: PgCluster) -> None:
    handle = server.get(table="items", offset="-1").headers["electric-handle"]
    response = server.get(table="items", offset="999999999999_0", handle=handle)
    assert response.status_code == 400
    assert errors_of(response) == {"offset": ["out of bounds for this shape"]}
    assert_still_serving(server, pg_module)


def test_missing_offset_and_handle(server: SyncServer) -> None:
    assert errors_of(server.get(table="items")) == {"offset": ["can't be blank"]}
    assert errors_of(server.get(table="items", offset="0_0")) == {"handle": ["can't be blank when offset != -1"]}


def test_live_with_offset_minus_one(server: SyncServer) -> None:
    response = server.get(table="items", offset="-1", live="true")
    assert errors_of(response) == {"live": ["can't be true when offset == -1"]}
    sse = server.get(table="items", offset="0_0", handle="x", live_sse="true")
    assert errors_of(sse) == {"live_sse": ["can't be true unless live is also true"]}


def test_unknown_table_and_columns(server: SyncServer, pg_module: PgCluster) -> None:
    assert errors_of(server.get(table="nope", offset="-1")) == {
        "table": [
            'Table "public"."nope" does not exist. If the table name contains capitals or special characters'
            " you must quote it."
        ]
    }
    assert errors_of(server.get(table="items", offset="-1", columns="id,nope")) == {
        "columns": ["The following columns are not found on the table: nope"]
    }
    assert errors_of(server.get(table="items", offset="-1", columns="name")) == {
        "columns": ["The list of columns must include all primary key columns, missing: id"]
    }
    where = errors_of(server.get(table="items", offset="-1", where="nope = 1"))
    assert list(where) == ["where"] and "nope" in where["where"][0]
    assert_still_serving(server, pg_module)


@pytest.mark.parametrize(
    "where",
    [
        "id IN (SELECT id FROM items)",
        "lower(name) = 'a'",
        "pg_sleep(10) IS NULL",
        "id = 1; DROP TABLE items",
        "id = 1 --",
        "name = 'a' OR 1=1); DROP TABLE items; --",
        "id = $1",  # no params[1]
    ],
)
def test_where_outside_the_supported_subset_is_400(server: SyncServer, pg_module: PgCluster, where: str) -> None:
    response = server.get(table="items", offset="-1", where=where)
    assert response.status_code == 400, response.text
    errors = errors_of(response)
    assert set(errors) <= {"where", "params"} and all(errors.values())
    assert_still_serving(server, pg_module)


@pytest.mark.parametrize("table", ["items; DROP TABLE items", 'items"; --', "a.b.c", '"', ""])
def test_injection_through_table_or_columns_is_400(server: SyncServer, pg_module: PgCluster, table: str) -> None:
    assert server.get(table=table, offset="-1").status_code == 400
    assert server.get(table="items", offset="-1", columns="id;DROP TABLE items").status_code == 400
    assert_still_serving(server, pg_module)


def test_huge_where_is_400(server: SyncServer, pg_module: PgCluster) -> None:
    where = " OR ".join(f"id = {i}" for i in range(3000))
    response = server.get(table="items", offset="-1", where=where)
    assert response.status_code == 400
    assert list(errors_of(response)) == ["where"]
    # Past what any client sends: refused by the HTTP layer before anything is parsed.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        target = f"/v1/shape?secret={server.secret}&table=items&offset=-1&where=" + "x" * 200_000
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        status_line = conn.makefile("rb").readline()
    assert int(status_line.split()[1]) in (400, 414, 431)
    assert_still_serving(server, pg_module)


def test_wrong_or_missing_secret_is_401(server: SyncServer) -> None:
    for params in ({"secret": "wrong"}, {}):
        response = httpx.get(server.url, params={"table": "items", "offset": "-1", **params})
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthorized - Invalid API secret"}
    assert httpx.delete(server.url, params={"table": "items", "secret": "x"}).status_code == 401
    # Health needs no secret; CORS preflight neither.
    assert httpx.get(server.base + "/v1/health").status_code == 200
    assert httpx.options(server.url).status_code == 204


def test_stale_handle_is_409_naming_the_current_one(server: SyncServer) -> None:
    current = server.get(table="items", offset="-1").headers["electric-handle"]
    response = server.get(table="items", offset="0_0", handle="0000000000000000-1")
    assert response.status_code == 409
    assert response.json() == [{"headers": {"control": "must-refetch"}}]
    assert response.headers["electric-handle"] == current
    assert response.headers["cache-control"] == "public, max-age=60, must-revalidate"


def test_etag_revalidation_gives_304(server: SyncServer) -> None:
    first = server.get(table="items", offset="-1")
    again = httpx.get(
        server.url,
        params={"table": "items", "offset": "-1", "secret": server.secret},
        headers={"if-none-match": first.headers["etag"]},
    )
    assert again.status_code == 304
    assert again.headers["electric-offset"] == first.headers["electric-offset"]


def test_unknown_route_and_delete_of_unknown_shape(server: SyncServer) -> None:
    assert httpx.get(server.base + "/v2/shape").status_code == 404
    response = httpx.delete(server.url, params={"table": "items", "where": "id = 42", "secret": server.secret})
    assert response.status_code == 404


def test_offset_0_inf_reads_what_follows_the_snapshot(server: SyncServer, pg_module: PgCluster) -> None:
    # Electric hands clients `0_inf` for "the end of the snapshot"; one holding it (from an Electric server,
    # or from before a restart) gets exactly the changes after the snapshot, never a 400.
    first = server.get(table="items", offset="-1", where="house_id = 7")
    handle = first.headers["electric-handle"]
    execute(pg_module.dsn, "INSERT INTO items VALUES (70, 'after', 7)")
    for _ in range(100):
        response = server.get(table="items", offset="0_inf", handle=handle, where="house_id = 7")
        assert response.status_code == 200, response.text
        rows = [m["value"]["id"] for m in response.json() if "value" in m]
        if rows:
            break
    assert rows == ["70"]
