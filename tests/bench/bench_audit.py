"""The audit trail under load: the cost of auditing writes, shipping throughput, lag, and verify time.

    .venv/bin/python -m tests.bench.bench_audit [--writes 2000] [--events 1000000] [--lag-seconds 60]

Runs throwaway Postgres 15 clusters (tests/support/pg.py, fsync on) and a real TLS SeaweedFS with Object Lock
(tests/support/objectstore.py), each tenant with its own cluster, identity and COMPLIANCE bucket, and prints:
- audited writes through the gateway: POST /api/environments (auth, membership check, insert, audit row,
  commit) against the same POSTs with the gateway's audit append switched off, interleaved in one run; one
  client, then 8 concurrent clients. Target ≤ 1.3x.
- audited writes without the gateway: the write shape done directly (the gateway role inserts a house and, in
  the same transaction, appends its audit event with `append_event`) against the same inserts without the
  audit row, interleaved in one run; one writer, then 8 concurrent writers (every audited write serialises on the chain
  head until it commits, so concurrency is where auditing costs most): the database's own share of the cost.
- shipping throughput: `--events` events committed, then the shipper (batches of 10,000) moves them to locked
  objects; events/s from the first PUT to the watermark at the head. Target ≥ 5,000/s.
- lag at a steady 1,000 events/s: `appliance audit ship` as its own process with the default settings
  (10,000 events or 5 s), a writer committing 10 events every 10 ms for `--lag-seconds`; lag of an event =
  when its batch was recorded shipped (after the store acknowledged) minus its ts. p50/p99/max. Target p99 < 10 s.
- verify of the `--events` events: from S3, from Postgres, and both with their agreement. Target < 60 s.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from appliance.audit.chain import AuditEvent, append_event, append_events
from tests.bench.measure import percentile
from tests.support.audit import AuditRig, audit_rig, stop
from tests.support.objectstore import object_store


def _house(conn: psycopg.Connection[Any], principal: uuid.UUID) -> uuid.UUID:
    house = uuid.uuid4()
    conn.execute("INSERT INTO public.houses (id, house_id, name, created_by) VALUES (%s, %s, %s, %s)",
                 (house, house, "bench house", principal))
    return house


def _write(conn: psycopg.Connection[Any], audited: bool, principal: uuid.UUID) -> None:
    with conn.transaction():
        house = _house(conn, principal)
        if audited:
            # What the gateway appends for a house.create, last in the transaction (it locks the chain head).
            append_event(conn, AuditEvent(f"user:{principal}", "house.create", house, f"house:{house}",
                                          {"name": "bench house"}))


def bench_writes(rig: AuditRig, writes: int) -> None:
    principal = uuid.uuid4()
    timings: dict[bool, list[float]] = {True: [], False: []}
    with rig.gateway_conn() as conn:
        for _ in range(50):  # warm the caches and the connection
            _write(conn, True, principal)
            _write(conn, False, principal)
        rounds = 10
        for _ in range(rounds):
            for with_audit in (False, True):
                started = time.perf_counter()
                for _ in range(writes // rounds):
                    _write(conn, with_audit, principal)
                timings[with_audit].append(time.perf_counter() - started)
    plain, audited = sum(timings[False]), sum(timings[True])
    print(f"one writer, {writes} writes each:       plain {writes / plain:8.0f}/s ({plain / writes * 1000:.3f} ms)  "
          f"audited {writes / audited:8.0f}/s ({audited / writes * 1000:.3f} ms)  ratio {audited / plain:5.2f}x "
          "(target <= 1.3x)")

    def concurrent(is_audited: bool, threads: int = 8) -> float:
        per_thread = writes // threads
        barrier = threading.Barrier(threads + 1)

        def run() -> None:
            with rig.gateway_conn() as conn:
                barrier.wait()
                for _ in range(per_thread):
                    _write(conn, is_audited, principal)

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        return (per_thread * threads) / (time.perf_counter() - started)

    plain_rate, audited_rate = concurrent(False), concurrent(True)
    plain_rate2, audited_rate2 = concurrent(False), concurrent(True)
    plain_rate, audited_rate = (plain_rate + plain_rate2) / 2, (audited_rate + audited_rate2) / 2
    print(f"8 writers, {writes} writes each:        plain {plain_rate:8.0f}/s  audited {audited_rate:8.0f}/s  "
          f"ratio {plain_rate / audited_rate:5.2f}x")


def bench_gateway_writes(writes: int) -> None:
    """POST /api/environments through the real gateway (in process, real uvicorn, real Postgres), with its audit
    row and — same requests, same run, interleaved — with the audit append switched off (the function the
    gateway's write transaction calls to append its events replaced by a no-op for those rounds)."""
    import socket

    import httpx

    import appliance.gateway.domain.access as access
    from tests.support.pg import pg_cluster
    from tests.support.stack import gateway_in_process, make_tenant, provision, remove_base, temp_base

    real_append = access.append_events_async

    async def no_audit(conn: Any, events: Any) -> list[tuple[int, str]]:
        return []

    base = temp_base("appliance-audit-bench-")
    try:
        with pg_cluster() as pg:
            env = make_tenant(base, pg=pg)
            provision(env)
            with gateway_in_process(env) as gateway:
                principal = uuid.uuid4()
                headers = {"Authorization": f"Bearer {env.token(principal, ttl=3600)}"}
                nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

                def client() -> httpx.Client:
                    return httpx.Client(base_url=gateway.url, headers=headers, timeout=30,
                                        transport=httpx.HTTPTransport(socket_options=nodelay))

                with client() as api:
                    response = api.post("/api/houses", json={"name": "bench"})
                    assert response.status_code == 201, response.text
                    house = response.json()["data"]["id"]
                    counter = [0]

                    def post(http: httpx.Client) -> None:
                        counter[0] += 1
                        answer = http.post("/api/environments", json={"house_id": house, "name": f"env-{counter[0]}"})
                        assert answer.status_code == 201, answer.text

                    def set_audit(on: bool) -> None:
                        access.append_events_async = real_append if on else no_audit  # type: ignore[assignment]

                    for _ in range(100):
                        post(api)
                    timings: dict[bool, float] = {True: 0.0, False: 0.0}
                    rounds = 10
                    for _ in range(rounds):
                        for audited in (False, True):
                            set_audit(audited)
                            started = time.perf_counter()
                            for _ in range(writes // rounds):
                                post(api)
                            timings[audited] += time.perf_counter() - started
                    set_audit(True)
                with env.superuser() as conn:
                    recorded = conn.execute("SELECT count(*) FROM audit.events WHERE action = 'environment.create'"
                                            ).fetchone()
                # The switch did switch: only the warm-up and the audited rounds left events.
                assert recorded is not None and recorded[0] == 100 + writes // rounds * rounds, recorded
                plain, audited_s = timings[False] / writes * 1000, timings[True] / writes * 1000
                print(f"through the gateway, 1 client, {writes} POSTs each: without audit {plain:6.3f} ms  audited "
                      f"{audited_s:6.3f} ms  ratio {audited_s / plain:5.2f}x (target <= 1.3x)")

                def concurrent(on: bool, threads: int = 8) -> float:
                    set_audit(on)
                    per_thread = writes // threads
                    barrier = threading.Barrier(threads + 1)

                    def run() -> None:
                        with client() as http:
                            barrier.wait()
                            for _ in range(per_thread):
                                post(http)

                    workers = [threading.Thread(target=run) for _ in range(threads)]
                    for worker in workers:
                        worker.start()
                    barrier.wait()
                    started = time.perf_counter()
                    for worker in workers:
                        worker.join()
                    return per_thread * threads / (time.perf_counter() - started)

                try:
                    rates = {on: (concurrent(on) + concurrent(on)) / 2 for on in (False, True)}
                finally:
                    set_audit(True)
                print(f"through the gateway, 8 clients:               without audit {rates[False]:6.0f}/s  audited "
                      f"{rates[True]:6.0f}/s  ratio {rates[False] / rates[True]:5.2f}x")
    finally:
        remove_base(base)


def bulk_events(rig: AuditRig, count: int, chunk: int = 10_000) -> float:
    """`count` events appended as the gateway role (chain trigger and all), in transactions of `chunk` (every
    event moves the chain head: a transaction of many events walks an ever longer chain of head versions)."""
    started = time.perf_counter()
    with rig.gateway_conn() as conn:
        done = 0
        while done < count:
            size = min(chunk, count - done)
            events = [AuditEvent(f"user:{uuid.UUID(int=(done + i) % 500)}", "thread.entry.create",
                                 uuid.UUID(int=(done + i) % 40), f"thread:{uuid.UUID(int=done + i)}",
                                 {"entry": str(uuid.UUID(int=done + i)), "bytes": 200 + (done + i) % 900})
                      for i in range(size)]
            append_events(conn, events)
            done += size
    return time.perf_counter() - started


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    return result, seconds


def bench_lag(rig: AuditRig, seconds: float, rate: int = 1000) -> None:
    process = rig.start_shipper(log_name="bench-lag.log")
    stop_writing = threading.Event()
    written = [0]

    def writer() -> None:
        per_tick, tick = rate // 100, 0.01
        with rig.gateway_conn() as conn:
            next_at = time.monotonic()
            while not stop_writing.is_set():
                events = [AuditEvent("user:bench", "thing.update", None, f"t:{written[0] + i}", {"i": written[0] + i})
                          for i in range(per_tick)]
                append_events(conn, events)
                written[0] += per_tick
                next_at += tick
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    thread = threading.Thread(target=writer)
    try:
        thread.start()
        time.sleep(seconds)
        stop_writing.set()
        thread.join()
        rig.wait_shipped(rig.head(), 120)
    finally:
        stop_writing.set()
        stop(process)
    with rig.audit_conn() as conn:
        lags = [float(r[0]) for r in conn.execute(
            "SELECT extract(epoch FROM b.shipped_at - e.ts) FROM audit.events e "
            "JOIN audit.batches b ON e.seq BETWEEN b.first_seq AND b.last_seq").fetchall()]
        first_ts, last_ts = conn.execute("SELECT min(ts), max(ts) FROM audit.events").fetchone()  # type: ignore[misc]
        batches = conn.execute("SELECT count(*) FROM audit.batches").fetchone()
    span = (last_ts - first_ts).total_seconds()
    lags.sort()
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    print(f"lag at {written[0] / span:6.0f} events/s for {span:.0f}s:  p50 {p50:5.2f} s  p99 {p99:5.2f} s  "
          f"max {lags[-1]:5.2f} s  ({len(lags)} events in {batches[0] if batches else '?'} batches; "
          "target p99 < 10 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--lag-seconds", type=float, default=60)
    args = parser.parse_args()

    bench_gateway_writes(args.writes)
    with object_store([]) as store:
        with audit_rig(store) as rig:
            bench_writes(rig, args.writes)
        with audit_rig(store) as rig:
            bench_lag(rig, args.lag_seconds)
        with audit_rig(store, audit={"batch_max_events": 10_000}) as rig:
            insert_s = bulk_events(rig, args.events, chunk=1000)
            print(f"appended {args.events} events in {insert_s:6.1f} s ({args.events / insert_s:8.0f}/s, as the "
                  "gateway role, chain trigger included)")
            shipper = rig.shipper(max_events=10_000)
            try:
                shipped, ship_s = timed(shipper.drain)
            finally:
                shipper.close()
            assert shipped == args.events, shipped
            sizes = [r[0] for r in rig.sql("SELECT body_bytes FROM audit.batches")]
            print(f"shipped {args.events} events in {ship_s:6.1f} s: {args.events / ship_s:8.0f} events/s to locked "
                  f"objects ({len(sizes)} batches of at most 10,000; target >= 5,000/s)")
            print(f"  batch objects: mean {statistics.mean(sizes) / 1e6:.2f} MB "
                  f"({statistics.mean(sizes) * len(sizes) / args.events:.0f} bytes/event gzip)")
            for source in ("s3", "db", "both"):
                report, verify_s = timed(functools.partial(rig.verify, source))
                assert report.ok, report.summary()
                print(f"verify --from {source:<4} of {args.events} events: {verify_s:6.1f} s "
                      f"({args.events / verify_s:8.0f} events/s; target < 60 s)")


if __name__ == "__main__":
    main()
