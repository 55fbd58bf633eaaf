"""The sync engine as the appliance deploys it: a role with only REPLICATION and SELECT on tables the deploy
published; schema changes rotate shapes (also when they happened while the engine was down); log modes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from appliance.sync.defaults import PUBLICATION
from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute


@pytest.fixture
def sync_role_dsn(pg: PgCluster) -> str:
    execute(
        pg.dsn,
        "CREATE TABLE houses (id int PRIMARY KEY, name text, deleted_at timestamptz)",
        "CREATE TABLE private_notes (id int PRIMARY KEY, body text)",
        "ALTER TABLE houses REPLICA IDENTITY FULL",
        f"CREATE PUBLICATION {PUBLICATION} FOR TABLE houses",
        "CREATE ROLE sync LOGIN REPLICATION PASSWORD 'sync-pw'",
        "GRANT SELECT ON houses, private_notes TO sync",
        "INSERT INTO houses VALUES (1, 'one', NULL), (2, 'two', now())",
    )
    return f"postgresql://sync:sync-pw@127.0.0.1:{pg.port}/{pg.dbname}"


@pytest.fixture
def server(pg: PgCluster, sync_role_dsn: str) -> Iterator[SyncServer]:
    sync = SyncServer(sync_role_dsn, long_poll_ms=1500).start()
    try:
        yield sync
    finally:
        sync.stop()
        sync.remove()


def rows(response_json: list[dict[str, object]]) -> list[object]:
    return [m["value"] for m in response_json if "key" in m]  # type: ignore[index]


def test_sync_role_serves_published_tables_without_owning_them(pg: PgCluster, server: SyncServer) -> None:
    response = server.get(table="houses", offset="-1", where="deleted_at IS NULL")
    assert response.status_code == 200, response.text
    assert rows(response.json()) == [{"id": "1", "name": "one", "deleted_at": None}]
    handle, offset = response.headers["electric-handle"], response.headers["electric-offset"]
    offset = server.get(table="houses", offset=offset, handle=handle, where="deleted_at IS NULL").headers[
        "electric-offset"
    ]
    execute(pg.dsn, "INSERT INTO houses VALUES (3, 'three', NULL)")
    live = server.get(table="houses", offset=offset, handle=handle, where="deleted_at IS NULL", live="true")
    assert rows(live.json()) == [{"id": "3", "name": "three", "deleted_at": None}]


def test_unpublished_table_the_role_cannot_publish_is_a_clear_400(server: SyncServer) -> None:
    response = server.get(table="private_notes", offset="-1")
    assert response.status_code == 400
    [message] = response.json()["errors"]["table"]
    assert '"public"."private_notes"' in message and PUBLICATION in message
    assert server.healthy()


def test_schema_change_rotates_the_shape(pg: PgCluster, server: SyncServer) -> None:
    first = server.get(table="houses", offset="-1")
    handle = first.headers["electric-handle"]
    caught_up = server.get(table="houses", offset=first.headers["electric-offset"], handle=handle)
    execute(pg.dsn, "ALTER TABLE houses ADD COLUMN color text", "INSERT INTO houses VALUES (4, 'four', NULL, 'red')")
    deadline = time.monotonic() + 10
    offset = caught_up.headers["electric-offset"]
    while True:
        response = server.get(table="houses", offset=offset, handle=handle, live="true")
        if response.status_code == 409 or time.monotonic() > deadline:
            break
        offset = response.headers["electric-offset"]
    assert response.status_code == 409
    fresh = server.get(table="houses", offset="-1")
    assert fresh.headers["electric-handle"] != handle
    assert '"color"' in fresh.headers["electric-schema"]


def test_schema_change_while_the_engine_is_down_rotates_the_shape(pg: PgCluster, server: SyncServer) -> None:
    first = server.get(table="houses", offset="-1")
    handle = first.headers["electric-handle"]
    server.stop()
    execute(pg.dsn, "ALTER TABLE houses ALTER COLUMN name TYPE varchar(40)")
    server.start()
    response = server.get(table="houses", offset=first.headers["electric-offset"], handle=handle)
    assert response.status_code == 409
    assert response.headers["electric-handle"] != handle


def test_changes_only_log_has_no_snapshot_rows(pg: PgCluster, server: SyncServer) -> None:
    first = server.get(table="houses", offset="-1", log="changes_only")
    assert [m["headers"]["control"] for m in first.json()] == ["snapshot-end"]
    handle = first.headers["electric-handle"]
    caught_up = server.get(table="houses", offset=first.headers["electric-offset"], handle=handle, log="changes_only")
    execute(pg.dsn, "UPDATE houses SET name = 'uno' WHERE id = 1")
    live = server.get(
        table="houses", offset=caught_up.headers["electric-offset"], handle=handle, log="changes_only", live="true"
    )
    assert rows(live.json()) == [{"id": "1", "name": "uno"}]
