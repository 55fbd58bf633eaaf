"""Mention → reply, end to end: a live reader through the gateway sees the `echo` agent's reply.

    .venv/bin/python -m tests.bench.bench_agents [--threads 20] [--rounds 25] [--warmup 3] [--sse]

Runs a throwaway Postgres 15 (tests/support/pg.py, fsync on), the streams server (file-backed), the gateway
(`appliance gateway serve`) and the agent workers (`appliance agents serve`), each its own process, like the
deployed stack. `--threads` threads each have a live reader through the gateway (long-poll, or `--sse`) and a
writer; in every round each writer posts `@echo …` and the clock runs from just before that POST until its
reader has the reply. Rounds follow each other per thread; the threads run concurrently.

Printed: p50/p99/max of mention → reply seen; the POST's own latency; and where the time goes, from the
worker's inbox timestamps (same clock): POST → activation accepted by the worker (gateway append, outbox,
dispatch), accepted → reply appended (stream read, handler, append, three SQLite commits), appended → seen by
the reader (streams server → gateway proxy → reader). Targets (issue 5): p50 < 50 ms, p99 < 200 ms at 20 threads.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from appliance.agents.store import store_path
from tests.agents.support import WorkerProcess, agents_tenant
from tests.gateway.support import provision, start_gateway_process, stop_process, streams_server, temp_base
from tests.support.pg import pg_cluster


@dataclass
class Sample:
    entry_id: str
    posted_at: float  # wall clock, to compare with the worker's inbox timestamps
    total_ms: float
    post_ms: float


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def describe(name: str, values: list[float]) -> str:
    return (f"{name:<34} p50 {pct(values, 50):7.1f} ms   p99 {pct(values, 99):7.1f} ms   "
            f"max {max(values):7.1f} ms   (n={len(values)})")


async def read_until_reply(http: httpx.AsyncClient, thread: str, offset: str, entry_id: str, sse: bool
                           ) -> tuple[float, str]:
    """Tail the thread live from `offset` until the reply to `entry_id` arrives: (when, offset after it)."""
    if sse:
        async with http.stream("GET", f"/api/threads/{thread}/stream",
                               params={"offset": offset, "live": "sse"}) as response:
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "data":
                    import json

                    for message in json.loads(line[5:]):
                        if message.get("reply_to") == entry_id:
                            return time.perf_counter(), ""
        raise RuntimeError("SSE stream ended before the reply")
    while True:
        response = await http.get(f"/api/threads/{thread}/stream", params={"offset": offset, "live": "long-poll"})
        offset = response.headers.get("stream-next-offset", offset)
        if response.status_code == 200 and any(m.get("reply_to") == entry_id for m in response.json()):
            return time.perf_counter(), offset


async def thread_loop(http: httpx.AsyncClient, thread: str, agent: str, rounds: int, warmup: int, sse: bool,
                      run: Run) -> None:
    offset = (await http.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})).headers["stream-next-offset"]
    for n in range(warmup + rounds):
        entry_id = str(uuid.uuid4())
        reader = asyncio.create_task(read_until_reply(http, thread, offset, entry_id, sse))
        await asyncio.sleep(0.005)  # the reader's request is at the streams server before the write
        wall, started = time.time(), time.perf_counter()
        response = await http.post(f"/api/threads/{thread}/entries", json={"id": entry_id, "text": f"@{agent} {n}"})
        post_ms = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        seen, after = await asyncio.wait_for(reader, 30)
        if sse:
            after = (await http.get(f"/api/threads/{thread}/stream", params={"offset": "now"})
                     ).headers["stream-next-offset"]
        offset = after
        if n >= warmup:
            run.samples.append(Sample(entry_id, wall, (seen - started) * 1000, post_ms))


def inbox_times(path: Path) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(path) as db:
        return {row[0]: (row[1], row[2]) for row in
                db.execute("SELECT entry_id, accepted_at, finished_at FROM inbox WHERE state = 'done'")}


async def bench(gateway_url: str, token: str, threads: int, rounds: int, warmup: int, sse: bool, agents: int
                ) -> tuple[Run, list[str]]:
    limits = httpx.Limits(max_connections=4 * threads + 8, max_keepalive_connections=4 * threads + 8)
    async with httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(30.0), limits=limits) as http:
        house = (await http.post("/api/houses", json={"name": "bench"})).json()["data"]["id"]
        names = ["echo"] if agents == 1 else [f"echo{i}" for i in range(agents)]
        agent_ids = [(await http.post("/api/agents", json={"house_id": house, "name": name, "handler": "echo"})
                      ).json()["data"]["id"] for name in names]
        ids = [(await http.post("/api/threads", json={"house_id": house, "title": f"t{i}"})).json()["data"]["id"]
               for i in range(threads)]
        run = Run()
        await asyncio.gather(*(thread_loop(http, t, names[i % len(names)], rounds, warmup, sse, run)
                               for i, t in enumerate(ids)))
        return run, agent_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sse", action="store_true", help="live readers use SSE instead of long-polls")
    parser.add_argument("--agents", type=int, default=1,
                        help="echo agents the threads mention (1: all mention the same agent)")
    parser.add_argument("--per-agent", type=int, default=None,
                        help="agents.max_concurrency_per_agent (default: the role default)")
    args = parser.parse_args()
    base = temp_base("appliance-bench-agents-")
    try:
        with pg_cluster() as pg:
            settings: dict[str, Any] = {"max_concurrency": 16, "handler_timeout_s": 30,
                                        "max_concurrency_per_agent": args.per_agent or 2}
            env = agents_tenant(base, pg, agents=settings)
            provision(env)
            with streams_server(env.tenant.port("streams"), base / "streams", long_poll_ms=20_000):
                gateway = start_gateway_process(env)
                worker = WorkerProcess(env, None)
                try:
                    worker.start()
                    run, agent_ids = asyncio.run(bench(env.gateway_url(), env.token(uuid.uuid4(), ttl=3600),
                                                       args.threads, args.rounds, args.warmup, args.sse, args.agents))
                finally:
                    worker.stop()
                    stop_process(gateway)
            times: dict[str, tuple[float, float]] = {}
            for agent in agent_ids:
                times.update(inbox_times(store_path(env.tenant.agents_data, uuid.UUID(agent))))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    samples = run.samples
    reader = "SSE" if args.sse else "long-poll"
    print(f"mention → reply seen by a live {reader} reader through the gateway, echo handler, "
          f"{args.threads} concurrent threads × {args.rounds} rounds, {args.agents} echo agent(s), "
          f"{settings['max_concurrency_per_agent']} running per agent")
    print(describe("mention → reply seen", [s.total_ms for s in samples]))
    print(describe("POST entry (201)", [s.post_ms for s in samples]))
    staged = [(s, times[s.entry_id]) for s in samples if s.entry_id in times]
    print(describe("  POST → worker accepted", [(t[0] - s.posted_at) * 1000 for s, t in staged]))
    print(describe("  accepted → reply appended", [(t[1] - t[0]) * 1000 for s, t in staged]))
    print(describe("  appended → seen by the reader",
                   [s.total_ms - (t[1] - s.posted_at) * 1000 for s, t in staged]))
    p50, p99 = pct([s.total_ms for s in samples], 50), pct([s.total_ms for s in samples], 99)
    print(f"targets: p50 < 50 ms ({'met' if p50 < 50 else 'MISSED'}), p99 < 200 ms "
          f"({'met' if p99 < 200 else 'MISSED'})")
    print(f"(mean {statistics.fmean(s.total_ms for s in samples):.1f} ms)")


if __name__ == "__main__":
    main()
