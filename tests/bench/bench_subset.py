"""Subset snapshots at scale: 1,000 rows out of a 1,000,000-row table, through `appliance sync serve`.

    .venv/bin/python -m tests.bench.bench_subset [--rows 1000000] [--limit 1000] [--samples 60]

A throwaway Postgres 15 (tests/support/pg.py) holds `items(id bigint primary key, rank int, title text)` with
an index on `rank`; the engine serves a `log=changes_only` shape of the whole table (as TanStack DB's
on-demand sync asks for one) and each sample is one `GET /v1/shape?...&subset__where=rank >= $1
&subset__order_by=rank&subset__limit=1000` from a random start, timed from request to the whole body. The
floor, measured in the same run on the same cluster, is the same SELECT run straight from psycopg in a
REPEATABLE READ transaction (what the engine does for each subset, minus HTTP and JSON). Prints p50/p99 for
both and their ratio.
Target (issue 18): subset p50 < 20 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import httpx
import psycopg

from tests.bench.measure import percentile
from tests.support.pg import pg_cluster
from tests.support.sync import SyncServer, execute

QUERY = "SELECT id, rank, title FROM items WHERE rank >= %s ORDER BY rank LIMIT %s"


def fill(dsn: str, rows: int) -> None:
    execute(
        dsn,
        "CREATE TABLE items (id bigint PRIMARY KEY, rank int NOT NULL, title text NOT NULL)",
        f"INSERT INTO items SELECT g, ((g::bigint * 7919) % {rows})::int, 'item ' || g "
        f"FROM generate_series(1, {rows}) g",
        "CREATE INDEX items_rank ON items (rank)",
        "ANALYZE items",
    )


def direct(dsn: str, rows: int, limit: int, samples: int) -> list[float]:
    timings = []
    with psycopg.connect(dsn) as conn:
        for _ in range(samples):
            start = time.perf_counter()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                conn.execute("SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text").fetchone()
                fetched = conn.execute(QUERY, (random.randrange(rows - limit * 2), limit)).fetchall()
            timings.append((time.perf_counter() - start) * 1000)
            assert len(fetched) == limit
    return timings


def through_engine(server: SyncServer, rows: int, limit: int, samples: int) -> list[float]:
    timings = []
    base = {"table": "items", "log": "changes_only", "offset": "-1", "secret": server.secret,
            "subset__where": "rank >= $1", "subset__order_by": "rank", "subset__limit": str(limit)}
    with httpx.Client(timeout=60) as client:
        client.get(server.url, params={**base, "subset__params": '{"1": "0"}'}).raise_for_status()  # the shape
        for _ in range(samples):
            params = {**base, "subset__params": f'{{"1": "{random.randrange(rows - limit * 2)}"}}'}
            start = time.perf_counter()
            response = client.get(server.url, params=params)
            body = response.json()
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200 and len(body["data"]) == limit, response.text[:300]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()
    with pg_cluster() as pg:
        started = time.perf_counter()
        fill(pg.dsn, args.rows)
        print(f"table of {args.rows:,} rows with an index on rank filled in {time.perf_counter() - started:.1f} s")
        server = SyncServer(pg.dsn).start()
        try:
            direct(pg.dsn, args.rows, args.limit, 5)  # warm both paths the same way
            through_engine(server, args.rows, args.limit, 5)
            floor = direct(pg.dsn, args.rows, args.limit, args.samples)
            engine = through_engine(server, args.rows, args.limit, args.samples)
        finally:
            server.remove()
    floor_p50, engine_p50 = statistics.median(floor), statistics.median(engine)
    print(f"{args.limit} of {args.rows:,} rows, {args.samples} samples each")
    print(f"  psycopg, same SELECT (floor): p50 {floor_p50:6.2f} ms   p99 {percentile(floor, 99):6.2f} ms")
    print(f"  subset through the engine:    p50 {engine_p50:6.2f} ms   p99 {percentile(engine, 99):6.2f} ms"
          f"   ratio p50 {engine_p50 / floor_p50:4.1f}x")
    print(f"  target subset p50 < 20 ms: {'PASS' if engine_p50 < 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
