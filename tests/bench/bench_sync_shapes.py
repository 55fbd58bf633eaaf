"""Many shapes: does the engine's cost per change stay flat as shapes grow from 100 to 10,000?

    .venv/bin/python -m tests.bench.bench_sync_shapes [--shapes 10000] [--houses 1000] [--samples 200]
                                                      [--changes 10000]

The product's shape is `house_id = $1 AND deleted_at IS NULL`. Ten column selections per house make ten
distinct shapes of it, so every change concerns exactly ten shapes whatever the total: the two runs below
differ only in how many shapes the engine holds, which is what routing a change must not pay for.

- baseline: 100 shapes over 10 houses; the target: `--shapes` shapes over `--houses` houses, all registered
  (each read once from offset -1, so the engine keeps logging every change into all of them);
- a live long-poll client follows one shape of each of 10 houses (in both runs); commit→client latency is
  timed on single-row autocommit INSERTs into those houses (p50/p99), and sustained throughput is `--changes`
  rows in transactions of 100 to random houses, timed from the first commit until a marker row committed
  after them reached its client (the engine applies transactions in commit order);
- the engine's RSS with all shapes registered, and after the load.

Targets (issue 18): with 10,000 shapes, changes/s at least 80 % of the 100-shape figure, commit→client p50
< 10 ms, engine RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import threading
import time
from typing import Any

import httpx
import psycopg

from tests.bench.measure import percentile, rss_bytes
from tests.protocol.support import SyncServer
from tests.support.pg import pg_cluster

OPTIONAL = ("name", "a", "b", "c")
# Ten distinct column selections: the base columns and a different subset of the optional ones each.
VARIANTS = [",".join(("id", "house_id", "deleted_at", *extra))
            for extra in itertools.islice((c for r in range(5) for c in itertools.combinations(OPTIONAL, r)), 10)]
WHERE = "house_id = $1 AND deleted_at IS NULL"
# Houses with a live client, the same in both runs: the HTTP work of answering clients is then equal, and
# the runs differ only in the shapes the engine holds and logs into.
FOLLOWED = 10


def shape_params(server: SyncServer, house: int, variant: int) -> dict[str, str]:
    return {"table": "items", "where": WHERE, "params[1]": str(house), "columns": VARIANTS[variant],
            "secret": server.secret}


async def register(server: SyncServer, houses: range) -> None:
    """Every variant of every house read once from offset -1 (the table's rows for them are none yet)."""
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        semaphore = asyncio.Semaphore(32)

        async def one(house: int, variant: int) -> None:
            async with semaphore:
                for _ in range(20):
                    response = await client.get(server.url, params={**shape_params(server, house, variant),
                                                                    "offset": "-1"})
                    if response.status_code != 503:  # busy: the client retries after retry-after, as Electric's
                        break
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                if response.status_code != 200:
                    raise RuntimeError(f"house {house} variant {variant}: {response.status_code} {response.text}")

        await asyncio.gather(*(one(h, v) for h in houses for v in range(len(VARIANTS))))


class Followers:
    """One live long-poll loop per followed house (its variant 0); records when each row id arrives."""

    def __init__(self, server: SyncServer, houses: list[int]) -> None:
        self.server, self.houses = server, houses
        self.arrivals: dict[int, float] = {}
        self.ready = 0
        self.stop = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _follow(self, client: httpx.AsyncClient, house: int) -> None:
        query: dict[str, Any] = {**shape_params(self.server, house, 0), "offset": "-1"}
        live = False
        while not self.stop.is_set():
            try:
                response = await client.get(self.server.url, params=query)
            except httpx.HTTPError:
                if self.stop.is_set():
                    return
                raise
            now = time.perf_counter()
            response.raise_for_status()
            for message in response.json():
                if "key" in message and message["headers"]["operation"] == "insert":
                    self.arrivals.setdefault(int(message["value"]["id"]), now)
            query.update(offset=response.headers["electric-offset"], handle=response.headers["electric-handle"])
            if "electric-up-to-date" in response.headers and not live:
                live = True
                query["live"] = "true"
                self.ready += 1

    def _run(self) -> None:
        async def main() -> None:
            limits = httpx.Limits(max_connections=len(self.houses) + 10)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                await asyncio.gather(*(self._follow(client, house) for house in self.houses))

        self.loop.run_until_complete(main())

    def start(self) -> Followers:
        self.thread.start()
        deadline = time.monotonic() + 120
        while self.ready < len(self.houses):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"only {self.ready} of {len(self.houses)} followers synced")
            time.sleep(0.05)
        return self

    def wait(self, row_id: int, timeout: float = 120) -> float:
        deadline = time.perf_counter() + timeout
        while row_id not in self.arrivals:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"row {row_id} never arrived")
            time.sleep(0.0002)
        return self.arrivals[row_id]

    def close(self, server: SyncServer) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        server.stop()  # answers the waiting long polls before it exits
        self.thread.join(timeout=30)


def measure(dsn: str, shapes: int, houses: int, samples: int, changes: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items")
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, house_id int NOT NULL, name text, a int, b int,"
                     " c text, deleted_at timestamptz)")
    server = SyncServer(dsn, long_poll_ms=20_000).start()
    assert server.process is not None
    pid = server.process.pid
    try:
        started = time.perf_counter()
        asyncio.run(register(server, range(1, houses + 1)))
        registered_s = time.perf_counter() - started
        followed = list(range(1, FOLLOWED + 1))
        followers = Followers(server, followed).start()
        try:
            rss_idle = rss_bytes(pid) / 2**20
            deliveries = []
            next_id = 1
            with psycopg.connect(dsn, autocommit=True) as conn:
                for _ in range(samples):
                    conn.execute("INSERT INTO items (id, house_id, name) VALUES (%s, %s, 'x')",
                                 [next_id, random.choice(followed)])
                    committed = time.perf_counter()
                    deliveries.append((followers.wait(next_id) - committed) * 1000)
                    next_id += 1
                    time.sleep(0.005)
            first = time.perf_counter()
            with psycopg.connect(dsn) as conn, conn.cursor() as cur:
                for start in range(0, changes, 100):
                    cur.executemany("INSERT INTO items (id, house_id, name) VALUES (%s, %s, 'bulk')",
                                    [(next_id + i, random.randint(1, houses)) for i in range(start, start + 100)])
                    conn.commit()
                marker = next_id + changes
                cur.execute("INSERT INTO items (id, house_id, name) VALUES (%s, %s, 'marker')",
                            [marker, followed[0]])
                conn.commit()
            rate = (changes + 1) / (followers.wait(marker) - first)
            rss_loaded = rss_bytes(pid) / 2**20
        finally:
            followers.close(server)
    finally:
        server.remove()
    return {"shapes": shapes, "registered_s": registered_s, "p50": percentile(deliveries, 50),
            "p99": percentile(deliveries, 99), "rate": rate, "rss_idle": rss_idle, "rss_loaded": rss_loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, default=10_000)
    parser.add_argument("--houses", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--changes", type=int, default=10_000)
    args = parser.parse_args()
    if args.shapes != args.houses * len(VARIANTS):
        parser.error(f"--shapes must be {len(VARIANTS)} x --houses (ten column selections per house)")
    # A cluster each, so the second run does not start behind the first one's WAL and dropped table.
    with pg_cluster({"max_slot_wal_keep_size": "1GB"}) as pg:
        base = measure(pg.dsn, 100, 10, args.samples, args.changes)
    with pg_cluster({"max_slot_wal_keep_size": "1GB"}) as pg:
        many = measure(pg.dsn, args.shapes, args.houses, args.samples, args.changes)
    for run in (base, many):
        print(f"{run['shapes']:>6} shapes: registered in {run['registered_s']:6.1f} s;"
              f" commit→client p50 {run['p50']:6.2f} ms p99 {run['p99']:7.2f} ms;"
              f" {run['rate']:7.0f} changes/s; RSS {run['rss_idle']:6.1f} MB idle, {run['rss_loaded']:6.1f} MB loaded")
    ratio = many["rate"] / base["rate"]
    print(f"throughput with {args.shapes} shapes / with 100: {ratio:.2f}   (target >= 0.80: "
          f"{'PASS' if ratio >= 0.8 else 'FAIL'})")
    print(f"commit→client p50 with {args.shapes} shapes: {many['p50']:.2f} ms   (target < 10 ms: "
          f"{'PASS' if many['p50'] < 10 else 'FAIL'})")
    rss = max(many["rss_idle"], many["rss_loaded"])
    print(f"engine RSS with {args.shapes} shapes: {rss:.1f} MB   (target < 300 MB: {'PASS' if rss < 300 else 'FAIL'})")


if __name__ == "__main__":
    main()
