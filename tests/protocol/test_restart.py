"""Shapes, handles and logs survive a restart of the engine: a client resumes from its offset, no refetch."""

from __future__ import annotations

from typing import Any

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute, shape_client


def up_to_date(event: dict[str, Any]) -> bool:
    return event["event"] == "up-to-date"


def test_client_resumes_after_server_restart_without_refetch(pg: PgCluster) -> None:
    execute(pg.dsn, "CREATE TABLE items (id int PRIMARY KEY, name text)", "INSERT INTO items VALUES (1, 'a')")
    server = SyncServer(pg.dsn, long_poll_ms=2000).start()
    try:
        client = shape_client(server, "items")
        try:
            client.until(up_to_date)
            execute(pg.dsn, "INSERT INTO items VALUES (2, 'b')")
            before = client.until(lambda e: up_to_date(e) and len(e["rows"]) == 2)
        finally:
            client.close()
        server.stop()
        execute(pg.dsn, "INSERT INTO items VALUES (3, 'c')", "UPDATE items SET name = 'A' WHERE id = 1")
        server.start()
        resumed = shape_client(server, "items", offset=before["offset"], handle=before["handle"])
        try:
            event = resumed.until(lambda e: up_to_date(e) and any("key" in m for m in e["messages"]))
            responses = event["responses"]
            assert responses[0]["offset"] == before["offset"] and responses[0]["handle"] == before["handle"]
            assert all(r["status"] == 200 for r in responses), responses
            assert "-1" not in [r["offset"] for r in responses]
            assert event["handle"] == before["handle"]
            # Only what happened after its offset: the new row and the update, nothing from the snapshot.
            assert sorted((m["headers"]["operation"], m["key"]) for m in event["messages"] if "key" in m) == [
                ("insert", '"public"."items"/"3"'),
                ("update", '"public"."items"/"1"'),
            ]
        finally:
            resumed.close()
    finally:
        server.stop()
        server.remove()
