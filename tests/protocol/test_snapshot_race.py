"""A shape created while a writer commits concurrently: every row arrives exactly once, whether the snapshot
or the live stream carries it (transactions are split by the snapshot's xmin/xmax/xip_list)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute, shape_client


def up_to_date(event: dict[str, Any]) -> bool:
    return event["event"] == "up-to-date"


def test_rows_written_during_the_snapshot_arrive_exactly_once(pg_module: PgCluster, server: SyncServer) -> None:
    execute(pg_module.dsn, "CREATE TABLE racing (id int PRIMARY KEY, pad text)")
    execute(pg_module.dsn, "INSERT INTO racing SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        # Several concurrent connections, so transactions are in progress (xip_list) when the snapshot starts.
        next_id = iter(range(100_000, 10_000_000))
        lock = threading.Lock()

        def one() -> None:
            with psycopg.connect(pg_module.dsn) as conn:
                while not stop.is_set():
                    with lock:
                        ids = [next(next_id) for _ in range(5)]
                    for row_id in ids:
                        conn.execute("INSERT INTO racing VALUES (%s, 'live')", [row_id])
                    time.sleep(0.002)
                    conn.commit()
                    with lock:
                        written.extend(ids)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    thread = threading.Thread(target=writer)
    thread.start()
    client = shape_client(server, "racing")
    try:
        time.sleep(0.3)
        first = client.until(up_to_date, timeout=60)
        time.sleep(0.5)
        stop.set()
        thread.join()
        with psycopg.connect(pg_module.dsn) as conn:
            expected = {f'"public"."racing"/"{row_id}"' for (row_id,) in conn.execute("SELECT id FROM racing")}
        inserts: Counter[str] = Counter()
        inserts.update(m["key"] for m in first["messages"] if m.get("headers", {}).get("operation") == "insert")
        deadline = time.monotonic() + 60
        while True:
            event = client.next(max(1.0, deadline - time.monotonic()))
            if not up_to_date(event):
                continue
            inserts.update(m["key"] for m in event["messages"] if m.get("headers", {}).get("operation") == "insert")
            if set(event["rows"]) == expected:
                break
            assert time.monotonic() < deadline, f"{len(event['rows'])} of {len(expected)} rows"
        assert len(written) > 100
        assert not [k for k, n in inserts.items() if n > 1], "a row arrived twice"
    finally:
        stop.set()
        client.close()
