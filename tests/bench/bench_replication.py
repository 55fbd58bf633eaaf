"""How fast change capture decodes and delivers, and how long a commit takes to reach the consumer.

    .venv/bin/python -m tests.bench.bench_replication [--rows 100000] [--batch 1000] [--commits 300]

Runs a throwaway Postgres 15 (tests/support/pg.py, fsync on) and prints:
- backlog throughput: `--rows` single-row INSERT statements in transactions of `--batch`, all committed
  before the stream starts, then timed from start until the last change is delivered (and confirmed);
- live throughput: the same while the stream runs, timed from the first commit to the last delivery; on a
  small host the writer, Postgres, the walsender and the client share the CPUs, so it is printed next to
  the writer's own rate;
- decoder alone: pgoutput.decode_message over the recorded messages of one batch, without I/O;
- latency: `--commits` single-row autocommit INSERTs, a few ms apart, each measured from its commit
  timestamp (the server's clock, same host) and from the moment COMMIT returned to the writer, to the moment
  the consumer has the transaction. p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import psycopg

from appliance.sync import pgoutput
from appliance.sync.replication import ReplicationStream, ensure_publication_and_slot
from tests.bench.measure import percentile
from tests.support.pg import pg_cluster

TABLE_DDL = "CREATE TABLE {name} (id bigint PRIMARY KEY, name text NOT NULL, qty int, at timestamptz DEFAULT now())"


def insert_batches(dsn: str, table: str, rows: int, batch: int, start_id: int = 0) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for first in range(start_id, start_id + rows, batch):
            # executemany runs in pipeline mode: one single-row INSERT per row, one transaction per batch.
            cur.executemany(
                f"INSERT INTO {table} (id, name, qty) VALUES (%s, %s, %s)",
                [(i, f"item {i}", i % 97) for i in range(first, min(first + batch, start_id + rows))],
            )
            conn.commit()


async def drain(stream: ReplicationStream, changes: int) -> float:
    """Take transactions (confirming each, as the engine does) until `changes` changes arrived; the end time."""
    seen = 0
    while seen < changes:
        txn = await asyncio.wait_for(anext(stream), 60)
        seen += len(txn.changes)
        stream.confirm(txn.end_lsn)
    return time.perf_counter()


async def backlog_throughput(dsn: str, rows: int, batch: int) -> tuple[float, float]:
    """(changes/s delivered, rows/s the writer managed alone)."""
    ensure_publication_and_slot(dsn, "bench_pub", "bench_backlog", [("public", "bench_backlog")])
    started = time.perf_counter()
    insert_batches(dsn, "bench_backlog", rows, batch)
    writer_rate = rows / (time.perf_counter() - started)
    started = time.perf_counter()
    async with ReplicationStream(dsn, slot="bench_backlog", publication="bench_pub") as stream:
        finished = await drain(stream, rows)
    return rows / (finished - started), writer_rate


async def live_throughput(dsn: str, rows: int, batch: int) -> float:
    ensure_publication_and_slot(dsn, "bench_pub", "bench_live", [("public", "bench_live")])
    # The writer runs in its own process so that it does not compete with the stream for this one's GIL.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0)  # start the worker first
        async with ReplicationStream(dsn, slot="bench_live", publication="bench_pub") as stream:
            started = time.perf_counter()
            writer = asyncio.get_running_loop().run_in_executor(pool, insert_batches, dsn, "bench_live", rows, batch)
            finished = await drain(stream, rows)
            await writer
    return rows / (finished - started)


def decoder_throughput(dsn: str, batch: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')")
        insert_batches(dsn, "bench_backlog", batch, batch, start_id=10**9)
        payloads = [
            bytes(data)
            for (data,) in conn.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes('bench_raw', NULL, NULL,"
                " 'proto_version', '1', 'publication_names', 'bench_pub')"
            )
        ]
        conn.execute("SELECT pg_drop_replication_slot('bench_raw')")
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        for payload in payloads:
            pgoutput.decode_message(payload)
    return rounds * len(payloads) / (time.perf_counter() - started)


async def latency(dsn: str, commits: int) -> tuple[list[float], list[float]]:
    ensure_publication_and_slot(dsn, "bench_pub", "bench_latency", [("public", "bench_latency")])
    returned_at: dict[int, float] = {}  # xid → wall clock when COMMIT returned
    ready = threading.Event()

    def write() -> None:
        ready.wait()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(commits):
                xid = conn.execute(
                    "INSERT INTO bench_latency (id, name, qty) VALUES (%s, 'x', 1)"
                    " RETURNING pg_current_xact_id()::xid::text",
                    [i],
                ).fetchone()
                assert xid is not None
                returned_at[int(xid[0])] = time.time()
                time.sleep(0.005)

    from_commit_ts: list[float] = []
    from_commit_return: list[float] = []
    async with ReplicationStream(dsn, slot="bench_latency", publication="bench_pub") as stream:
        writer = asyncio.create_task(asyncio.to_thread(write))
        ready.set()
        delivered_at: dict[int, float] = {}
        commit_ts: dict[int, datetime] = {}
        for _ in range(commits):
            txn = await asyncio.wait_for(anext(stream), 30)
            delivered_at[txn.xid] = time.time()
            commit_ts[txn.xid] = txn.commit_ts
            stream.confirm(txn.end_lsn)
        await writer
    for xid, at in delivered_at.items():
        from_commit_ts.append((at - commit_ts[xid].timestamp()) * 1000)
        from_commit_return.append((at - returned_at[xid]) * 1000)
    return from_commit_ts, from_commit_return


def percentiles(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):6.2f} ms   p99 {percentile(values, 99):6.2f} ms   "
            f"max {max(values):6.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=300)
    args = parser.parse_args()

    with pg_cluster() as pg:
        dsn = pg.conninfo()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in ("bench_backlog", "bench_live", "bench_latency"):
                conn.execute(TABLE_DDL.format(name=name))
            version = conn.execute("SHOW server_version").fetchone()

        print(f"Postgres {version[0] if version else '?'}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
        rate, writer_rate = await backlog_throughput(dsn, args.rows, args.batch)
        print(f"backlog: {args.rows} single-row inserts in transactions of {args.batch}: {rate:,.0f} changes/s")
        rate = await live_throughput(dsn, args.rows, args.batch)
        print(
            f"live:    {args.rows} single-row inserts in transactions of {args.batch}: {rate:,.0f} changes/s"
            f" (the writer alone, stream idle: {writer_rate:,.0f} rows/s)"
        )
        rate = decoder_throughput(dsn, args.batch)
        print(f"decoder alone (pgoutput.decode_message, no I/O): {rate:,.0f} messages/s")
        from_ts, from_return = await latency(dsn, args.commits)
        print(f"latency over {args.commits} single-row commits:")
        print(f"  commit timestamp → delivered: {percentiles(from_ts)}")
        print(f"  COMMIT returned  → delivered: {percentiles(from_return)}")


if __name__ == "__main__":
    asyncio.run(main())
