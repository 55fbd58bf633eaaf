"""kill -9 of the engine while a writer commits: the official client, resuming by offset and handle, ends with
exactly the table's rows, every change exactly once, and never a 409."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute, shape_client

ROWS = 400


def up_to_date(event: dict[str, Any]) -> bool:
    return event["event"] == "up-to-date"


def test_kill_9_twice_while_writing_loses_and_repeats_nothing(pg: PgCluster) -> None:
    execute(pg.dsn, "CREATE TABLE items (id int PRIMARY KEY, n int)")
    server = SyncServer(pg.dsn, long_poll_ms=2000).start()
    client = shape_client(server, "items")
    done = threading.Event()

    def writer() -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for i in range(ROWS):
                conn.execute("INSERT INTO items VALUES (%s, %s)", [i, i])
                if i % 3 == 0:
                    conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", [i])
                time.sleep(0.004)
        done.set()

    try:
        client.until(up_to_date)
        thread = threading.Thread(target=writer)
        thread.start()
        for _ in range(2):
            time.sleep(0.5)
            server.kill()
            time.sleep(0.3)
            server.start()
        thread.join()
        assert done.is_set()
        with psycopg.connect(pg.dsn) as conn:
            expected = {
                f'"public"."items"/"{i}"': {"id": i, "n": n} for i, n in conn.execute("SELECT id, n FROM items")
            }
        seen_offsets: list[tuple[str, int]] = []
        statuses: list[int] = []
        deadline = time.monotonic() + 60
        while True:
            event = client.next(max(1.0, deadline - time.monotonic()))
            if event["event"] == "error":
                raise AssertionError(event)
            if not up_to_date(event):
                continue
            statuses.extend(r["status"] for r in event["responses"])
            seen_offsets.extend(
                (m["headers"]["lsn"], m["headers"]["op_position"])
                for m in event["messages"]
                if "lsn" in m.get("headers", {})
            )
            if event["rows"] == expected:
                break
            assert time.monotonic() < deadline, f"client has {len(event['rows'])} of {len(expected)} rows"
        assert len(seen_offsets) == len(set(seen_offsets)), "an offset was delivered twice"
        assert len(seen_offsets) == ROWS + len(range(0, ROWS, 3))
        assert 409 not in statuses
        assert server.healthy()
    finally:
        client.close()
        server.stop()
        server.remove()
