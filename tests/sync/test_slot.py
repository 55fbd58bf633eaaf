"""The sync engine never makes Postgres keep WAL for it without bound: its slot advances past writes to
unpublished tables, and if the slot is invalidated anyway every shape rotates (409) and serving goes on."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import psycopg

from appliance.sync.defaults import SLOT
from appliance.sync.lsn import parse_lsn
from appliance.sync.status import sync_status
from tests.support.pg import PgCluster, pg_cluster
from tests.support.sync import SyncServer, execute


def query(dsn: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row


def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.2)


def confirmed_flush(dsn: str) -> int:
    (lsn,) = query(dsn, f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{SLOT}'")
    return parse_lsn(str(lsn))


def test_writes_to_unpublished_tables_advance_the_slot(pg: PgCluster) -> None:
    execute(pg.dsn, "CREATE TABLE items (id int PRIMARY KEY)", "CREATE TABLE unpublished (id int, pad text)")
    server = SyncServer(pg.dsn, long_poll_ms=1000).start()
    try:
        assert server.get(table="items", offset="-1").status_code == 200  # publishes items only
        execute(pg.dsn, "INSERT INTO unpublished SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        (written,) = query(pg.dsn, "SELECT pg_current_wal_lsn()::text")
        eventually(lambda: confirmed_flush(pg.dsn) >= parse_lsn(str(written)), 30, "slot past unpublished writes")
        status = sync_status(pg.dsn, SLOT, server.data_dir)
        assert status["slot"]["exists"] and status["shapes"] == 1
        assert status["slot"]["confirmed_flush_lag_bytes"] is not None
    finally:
        server.stop()
        server.remove()


def test_invalidated_slot_rotates_every_shape_and_the_engine_stays_healthy() -> None:
    settings = {"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"}
    with pg_cluster(settings) as pg:
        execute(
            pg.dsn,
            "CREATE TABLE items (id int PRIMARY KEY, name text)",
            "INSERT INTO items VALUES (1, 'a')",
            "CREATE TABLE filler (pad text)",
        )
        server = SyncServer(pg.dsn, long_poll_ms=1000).start()
        try:
            first = server.get(table="items", offset="-1")
            other = server.get(table="items", offset="-1", where="id = 1")
            handles = {first.headers["electric-handle"], other.headers["electric-handle"]}
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)  # the engine falls behind: nothing confirms
            try:
                for _ in range(4):
                    execute(
                        pg.dsn,
                        "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)",
                        "SELECT pg_switch_wal()",
                    )
                execute(pg.dsn, "CHECKPOINT")
                eventually(
                    lambda: (
                        query(pg.dsn, f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'")
                        == ("lost",)
                    ),
                    30,
                    "slot invalidated",
                )
            finally:
                os.kill(server.process.pid, signal.SIGCONT)

            def rotated() -> bool:
                response = server.get(
                    table="items", offset=first.headers["electric-offset"], handle=first.headers["electric-handle"]
                )
                return response.status_code == 409

            eventually(rotated, 30, "409 for the old handle")
            fresh = server.get(table="items", offset="-1")
            assert fresh.status_code == 200
            assert fresh.headers["electric-handle"] not in handles
            assert server.get(table="items", offset="-1", where="id = 1").headers["electric-handle"] not in handles
            assert [m["value"]["id"] for m in fresh.json() if "key" in m] == ["1"]
            eventually(server.healthy, 10, "healthy")
            (wal_status,) = query(pg.dsn, f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'")
            assert wal_status in ("reserved", "extended")
            # And live changes flow again on the fresh shape.
            handle = fresh.headers["electric-handle"]
            caught_up = server.get(table="items", offset=fresh.headers["electric-offset"], handle=handle)
            execute(pg.dsn, "INSERT INTO items VALUES (2, 'b')")
            live = server.get(table="items", offset=caught_up.headers["electric-offset"], handle=handle, live="true")
            deadline = time.monotonic() + 10
            while not [m for m in live.json() if "key" in m] and time.monotonic() < deadline:
                live = server.get(table="items", offset=live.headers["electric-offset"], handle=handle, live="true")
            assert [m["value"]["id"] for m in live.json() if "key" in m] == ["2"]
        finally:
            server.stop()
            server.remove()
