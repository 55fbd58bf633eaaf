"""The embedded sync engine under load, end to end: Postgres → `appliance sync serve` → HTTP clients.

    .venv/bin/python -m tests.bench.bench_sync [--shapes 100] [--samples 300] [--changes 20000] [--rows 100000]

Runs a throwaway Postgres 15 (tests/support/pg.py, fsync on) and the engine as its own process, and prints:
- idle RSS of the engine (after start, and with the live shapes registered and idle);
- write→client latency: `--shapes` shapes `house_id = $1`, each with a live long-poll client; single-row
  autocommit INSERTs to a random house, a few ms apart, each timed from the moment COMMIT returned to the
  writer until the change reached that house's client (p50/p99/max), next to Postgres's own commit latency
  (INSERT+COMMIT round trip) measured in the same run, the floor;
- sustained throughput: `--changes` rows in transactions of 100 to random houses while the same clients
  poll, timed from the first commit until every client has every row (changes/s), next to the writer alone;
- initial sync of a `--rows` table: seconds from `offset=-1` to up-to-date for one client reading every chunk,
  and the engine's peak RSS meanwhile, also for a table a fifth that size (RSS must not grow with rows).
Targets (issue 3): p50 < 10 ms, p99 < 50 ms, ≥ 2,000 changes/s, 100k-row initial sync < 5 s, idle RSS < 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from tests.bench.measure import percentile, rss_bytes
from tests.support.pg import pg_cluster
from tests.support.sync import SyncServer


@contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """Samples the process's RSS every 20 ms while the block runs; the list ends up [peak]."""
    peak = [rss_bytes(pid) / 2**20]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(pid) / 2**20)
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


class LiveClients:
    """One long-poll loop per shape; records when each row id first arrives."""

    def __init__(self, server: SyncServer, houses: int) -> None:
        self.server = server
        self.houses = houses
        self.arrivals: dict[int, float] = {}
        self.ready = 0
        self.stopping = False

    async def follow(self, client: httpx.AsyncClient, house: int, stop: asyncio.Event) -> None:
        params = {"table": "items", "where": "house_id = $1", "params[1]": str(house), "secret": self.server.secret}
        offset, handle = "-1", None
        live = False
        while not stop.is_set():
            query = {**params, "offset": offset}
            if self.stopping:
                return
            if handle is not None:
                query["handle"] = handle
            if live:
                query["live"] = "true"
            try:
                response = await client.get(self.server.url, params=query)
            except httpx.HTTPError:
                if stop.is_set():
                    return
                raise
            if response.status_code != 200:
                raise RuntimeError(f"house {house}: {response.status_code} {response.text}")
            now = time.perf_counter()
            handle = response.headers["electric-handle"]
            offset = response.headers["electric-offset"]
            for message in response.json():
                if "key" in message and message["headers"]["operation"] == "insert":
                    self.arrivals.setdefault(int(message["value"]["id"]), now)
            if "electric-up-to-date" in response.headers and not live:
                live = True
                self.ready += 1

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_connections=self.houses + 10, max_keepalive_connections=self.houses + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self.follow(client, house, stop) for house in range(1, self.houses + 1)))


def start_clients(
    server: SyncServer, houses: int
) -> tuple[LiveClients, threading.Thread, asyncio.Event, asyncio.AbstractEventLoop]:
    clients = LiveClients(server, houses)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(clients.run(stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while clients.ready < houses:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"only {clients.ready} of {houses} shapes synced")
        time.sleep(0.05)
    return clients, thread, stop, loop


def wait_for(clients: LiveClients, ids: list[int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(i not in clients.arrivals for i in ids):
        if time.monotonic() > deadline:
            missing = [i for i in ids if i not in clients.arrivals]
            raise RuntimeError(f"{len(missing)} rows never arrived, e.g. {missing[:5]}")
        time.sleep(0.005)


def latency(
    dsn: str, clients: LiveClients, houses: int, samples: int, first_id: int
) -> tuple[list[float], list[float]]:
    deliveries: list[float] = []
    commits: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(samples):
            row_id = first_id + n
            started = time.perf_counter()
            conn.execute(
                "INSERT INTO items (id, house_id, name) VALUES (%s, %s, 'x')", [row_id, random.randint(1, houses)]
            )
            committed = time.perf_counter()
            commits.append((committed - started) * 1000)
            deadline = committed + 10
            while row_id not in clients.arrivals and time.perf_counter() < deadline:
                time.sleep(0.0002)
            if row_id not in clients.arrivals:
                raise RuntimeError(f"row {row_id} did not arrive")
            deliveries.append((clients.arrivals[row_id] - committed) * 1000)
            time.sleep(0.005)
    return deliveries, commits


def throughput(dsn: str, clients: LiveClients, houses: int, changes: int, first_id: int) -> tuple[float, float]:
    ids = list(range(first_id, first_id + changes))
    started = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for start in range(0, changes, 100):
            batch = ids[start : start + 100]
            cur.executemany(
                "INSERT INTO items (id, house_id, name) VALUES (%s, %s, 'bulk')",
                [(i, random.randint(1, houses)) for i in batch],
            )
            conn.commit()
    written = time.perf_counter()
    wait_for(clients, ids)
    finished = max(clients.arrivals[i] for i in ids)
    return changes / (finished - started), changes / (written - started)


def initial_sync(server: SyncServer, table: str) -> tuple[float, int]:
    """Seconds from offset=-1 to up-to-date reading every chunk, and rows received."""
    rows = 0
    offset, handle = "-1", None
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        while True:
            params = {"table": table, "offset": offset, "secret": server.secret}
            if handle:
                params["handle"] = handle
            response = client.get(server.url, params=params)
            response.raise_for_status()
            rows += sum(1 for m in response.json() if "key" in m)
            handle, offset = response.headers["electric-handle"], response.headers["electric-offset"]
            if "electric-up-to-date" in response.headers:
                return time.perf_counter() - started, rows


def fill(dsn: str, table: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, house_id int NOT NULL, name text NOT NULL,"
            " payload text, at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)"
        )
        conn.execute(
            f"INSERT INTO {table} (id, house_id, name, payload) SELECT g, g % 100, 'row ' || g,"
            f" md5(g::text) FROM generate_series(1, {rows}) g"
        )
        conn.execute(f"VACUUM ANALYZE {table}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=int, default=100)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    with pg_cluster({"max_slot_wal_keep_size": "1GB"}) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, house_id int NOT NULL, name text NOT NULL)")
        fill(pg.dsn, "big", args.rows)
        fill(pg.dsn, "small", args.rows // 5)
        server = SyncServer(pg.dsn).start()
        try:
            assert server.process is not None
            pid = server.process.pid
            time.sleep(1)
            idle = rss_bytes(pid) / 2**20
            print(f"idle RSS after start:                  {idle:7.1f} MB   (target < 80 MB)")

            with peak_rss(pid) as peak_small:
                small_s, small_rows = initial_sync(server, "small")
            with peak_rss(pid) as peak_big:
                big_s, big_rows = initial_sync(server, "big")
            print(f"initial sync {small_rows:>7} rows:           {small_s:7.2f} s    peak RSS {peak_small[0]:6.1f} MB")
            print(
                f"initial sync {big_rows:>7} rows:           {big_s:7.2f} s    peak RSS {peak_big[0]:6.1f} MB"
                f"   (target < 5 s; {big_rows // max(1, small_rows)}x the rows,"
                f" {peak_big[0] / peak_small[0]:.2f}x the peak RSS)"
            )

            clients, thread, stop, loop = start_clients(server, args.shapes)
            time.sleep(1)
            print(f"idle RSS with {args.shapes} live shapes polling:  {rss_bytes(pid) / 2**20:7.1f} MB")
            deliveries, commits = latency(pg.dsn, clients, args.shapes, args.samples, first_id=1)
            print(
                f"commit→client latency, {args.shapes} live shapes:  p50 {percentile(deliveries, 50):6.2f} ms"
                f"  p99 {percentile(deliveries, 99):6.2f} ms  max {max(deliveries):6.2f} ms"
                f"   (targets p50 < 10, p99 < 50)"
            )
            print(
                f"Postgres INSERT+COMMIT (the floor):     p50 {percentile(commits, 50):6.2f} ms"
                f"  p99 {percentile(commits, 99):6.2f} ms  mean {statistics.mean(commits):6.2f} ms"
            )
            rate, writer_rate = throughput(pg.dsn, clients, args.shapes, args.changes, first_id=10_000_000)
            print(
                f"sustained, {args.shapes} live shapes:            {rate:7.0f} changes/s delivered"
                f"   (writer alone {writer_rate:.0f}/s; target >= 2000)"
            )
            print(f"RSS after the load:                     {rss_bytes(pid) / 2**20:7.1f} MB")
            loop.call_soon_threadsafe(stop.set)
            server.stop()  # answers the waiting long polls (200 up-to-date) before it exits
            thread.join(timeout=30)
        finally:
            server.stop()
            server.remove()


if __name__ == "__main__":
    main()
