"""Chunking at a 10,000-byte threshold (`--chunk-bytes 10000`, Electric's client tests run theirs with
ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD=10000): the official client reads a large initial snapshot and a large
transaction from the log in responses near the threshold, several small transactions come back together, and
every chunk revalidates to 304 by its ETag."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, execute, shape_client

THRESHOLD = 10_000


@pytest.fixture(scope="module")
def chunked(pg_module: PgCluster) -> Iterator[SyncServer]:
    server = SyncServer(pg_module.dsn, long_poll_ms=1000, chunk_bytes=THRESHOLD).start()
    try:
        yield server
    finally:
        server.remove()


def insert_kilobyte_rows(dsn: str, table: str, rows: int) -> None:
    """`rows` rows with 1,000-character titles, in one transaction (as the client test's insertIssues)."""
    values = ", ".join(f"('{uuid.uuid4()}', '{secrets.token_hex(500)}')" for _ in range(rows))
    execute(dsn, f"INSERT INTO {table} (id, title) VALUES {values}")


def data_response_sizes(responses: list[dict[str, Any]]) -> list[int]:
    # Up-to-date-only answers (a few hundred bytes at most) are not chunks, as in Electric's test.
    return [r["bytes"] for r in responses if r["status"] == 200 and r["bytes"] is not None and r["bytes"] > 500]


def assert_near_threshold(sizes: list[int]) -> None:
    assert len(sizes) >= 2, sizes
    for size in sizes[:-1]:
        assert abs(size - THRESHOLD) <= 2_000, sizes  # Electric's test: close to 10 kB ± 2 kB
    assert sizes[-1] < 11_000, sizes


def test_a_large_snapshot_and_a_large_transaction_come_in_chunks_near_the_threshold(
    pg_module: PgCluster, chunked: SyncServer, table_name: str
) -> None:
    execute(pg_module.dsn, f"CREATE TABLE {table_name} (id uuid PRIMARY KEY, title text NOT NULL)")
    insert_kilobyte_rows(pg_module.dsn, table_name, 35)
    client = shape_client(chunked, table_name, measureBytes=True)
    try:
        first = client.until(lambda e: e["event"] == "up-to-date" and len(e["rows"]) == 35, what="initial sync")
        responses = first["responses"]
        assert_near_threshold(data_response_sizes(responses))
        insert_kilobyte_rows(pg_module.dsn, table_name, 35)  # one transaction of about 35 kB, from the log
        second = client.until(lambda e: e["event"] == "up-to-date" and len(e["rows"]) == 70, what="catch-up")
        assert_near_threshold(data_response_sizes(second["responses"]))
    finally:
        client.close()


def test_small_transactions_from_one_offset_come_back_together_and_revalidate(
    pg_module: PgCluster, chunked: SyncServer, table_name: str
) -> None:
    execute(pg_module.dsn, f"CREATE TABLE {table_name} (id int PRIMARY KEY, title text NOT NULL)")
    first = chunked.get(table=table_name, offset="-1")
    handle = first.headers["electric-handle"]
    for n in range(1, 10):  # nine transactions
        execute(pg_module.dsn, f"INSERT INTO {table_name} VALUES ({n}, 'foo{n}')")
    for _ in range(200):  # until the engine has logged all nine
        response = chunked.get(table=table_name, offset="0_0", handle=handle)
        messages = response.json()
        if len(messages) == 10:
            break
        time.sleep(0.05)
    assert len(messages) == 10  # nine inserts and up-to-date, as Electric answers
    etag = response.headers["etag"]
    again = httpx.get(chunked.url, params={"table": table_name, "offset": "0_0", "handle": handle,
                                            "secret": chunked.secret}, headers={"if-none-match": etag})
    assert again.status_code == 304
    # And from the middle of the log.
    middle = next(m["headers"] for m in messages if m.get("value", {}).get("id") == "4")
    mid_offset = f"{middle['lsn']}_{middle['op_position']}"
    from_middle = chunked.get(table=table_name, offset=mid_offset, handle=handle)
    assert [m["value"]["id"] for m in from_middle.json() if "value" in m] == [str(n) for n in range(5, 10)]
    revalidated = httpx.get(chunked.url, params={"table": table_name, "offset": mid_offset, "handle": handle,
                                                 "secret": chunked.secret},
                            headers={"if-none-match": from_middle.headers["etag"]})
    assert revalidated.status_code == 304
