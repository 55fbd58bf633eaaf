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
import contextlib
import json
import os
import random
import resource
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from appliance.agents.store import store_path
from appliance.gateway.upstream import Upstream, UpstreamError
from tests.bench.measure import cpu_seconds, percentile
from tests.support.agents import WorkerProcess, agents_tenant
from tests.support.pg import pg_cluster
from tests.support.stack import provision, start_gateway_process, stop_process, streams_server, temp_base


@dataclass
class Sample:
    entry_id: str
    posted_at: float  # wall clock, to compare with the worker's inbox timestamps
    total_ms: float
    post_ms: float


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)


def describe(name: str, values: list[float]) -> str:
    return (f"{name:<34} p50 {percentile(values, 50):7.1f} ms   p99 {percentile(values, 99):7.1f} ms   "
            f"max {max(values):7.1f} ms   (n={len(values)})")


class Client:
    """The bench's HTTP client for the measured requests: the gateway's lean loopback client (gateway/upstream.py),
    so the client - on the same two cores as everything it measures - takes as little CPU as it can."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.upstream = Upstream(host, port)
        self.auth = {"authorization": f"Bearer {token}"}

    async def get(self, path: str, params: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
        response = await self.upstream.request("GET", path, params=params, headers=self.auth, read_timeout=60)
        body = await response.read()
        return response.status, {k.lower(): v for k, v in response.headers}, body

    async def post(self, path: str, body: Any) -> int:
        response = await self.upstream.request("POST", path, body=json.dumps(body).encode(),
                                               headers={**self.auth, "content-type": "application/json"})
        await response.read()
        return response.status

    async def sse(self, path: str, params: list[tuple[str, str]]) -> AsyncIterator[str]:
        response = await self.upstream.request("GET", path, params=params, headers=self.auth, read_timeout=None)
        pending = b""
        async for chunk in response.iter_bytes():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode().rstrip("\r")


class LiveReader:
    """One live reader of a thread through the gateway, connected for the whole run (as a client tailing a
    thread is): it notes when each reply arrives."""

    def __init__(self, client: Client, thread: str, offset: str, sse: bool) -> None:
        self.client, self.path, self.offset, self.sse = client, f"/api/threads/{thread}/stream", offset, sse
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.task = asyncio.create_task(self._sse() if sse else self._long_poll())

    def expect(self, entry_id: str) -> asyncio.Future[float]:
        self.waiting[entry_id] = asyncio.get_running_loop().create_future()
        return self.waiting[entry_id]

    def _seen(self, messages: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        for message in messages:
            waiter = self.waiting.pop(str(message.get("reply_to")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    async def _long_poll(self) -> None:
        while True:
            status, headers, body = await self.client.get(self.path, [("offset", self.offset), ("live", "long-poll")])
            self.offset = headers.get("stream-next-offset", self.offset)
            if status == 200:
                self._seen(json.loads(body))

    async def _sse(self) -> None:
        while True:
            event = ""
            async for line in self.client.sse(self.path, [("offset", self.offset), ("live", "sse")]):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    payload = json.loads(line[5:])
                    if event == "data":
                        self._seen(payload)
                    elif event == "control" and isinstance(payload, dict):
                        self.offset = payload.get("streamNextOffset", self.offset)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
            await self.task


async def thread_loop(client: Client, thread: str, agent: str, rounds: int, warmup: int, sse: bool,
                      interval_s: float, run: Run) -> None:
    _, headers, _ = await client.get(f"/api/threads/{thread}/stream", [("offset", "-1")])
    reader = LiveReader(client, thread, headers["stream-next-offset"], sse)
    await asyncio.sleep(0.2)  # connected before the first write
    # Threads start spread over one interval, as independent conversations would.
    await asyncio.sleep(random.uniform(0, interval_s))
    try:
        for n in range(warmup + rounds):
            next_round = time.perf_counter() + interval_s
            entry_id = str(uuid.uuid4())
            arrived = reader.expect(entry_id)
            wall, started = time.time(), time.perf_counter()
            status = await client.post(f"/api/threads/{thread}/entries", {"id": entry_id, "text": f"@{agent} {n}"})
            post_ms = (time.perf_counter() - started) * 1000
            if status != 201:
                raise RuntimeError(f"posting an entry answered {status}")
            seen = await asyncio.wait_for(arrived, 30)
            if n >= warmup:
                run.samples.append(Sample(entry_id, wall, (seen - started) * 1000, post_ms))
            await asyncio.sleep(max(0.0, next_round - time.perf_counter()))
    finally:
        await reader.close()


def inbox_times(path: Path) -> dict[str, tuple[float, float]]:
    with sqlite3.connect(path) as db:
        return {row[0]: (row[1], row[2]) for row in
                db.execute("SELECT entry_id, accepted_at, finished_at FROM inbox WHERE state = 'done'")}


Snapshot = Callable[[], dict[str, float]]


async def bench(gateway_url: str, token: str, args: argparse.Namespace, snapshot: Snapshot
                ) -> tuple[Run, list[str], dict[str, float]]:
    """Returns the samples, the agents' ids and the CPU seconds each process used during the rounds."""
    limits = httpx.Limits(max_connections=4 * args.threads + 8, max_keepalive_connections=4 * args.threads + 8)
    async with httpx.AsyncClient(base_url=gateway_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(30.0), limits=limits) as http:
        house = (await http.post("/api/houses", json={"name": "bench"})).json()["data"]["id"]
        names = ["echo"] if args.agents == 1 else [f"echo{i}" for i in range(args.agents)]
        agent_ids = [(await http.post("/api/agents", json={"house_id": house, "name": name, "handler": "echo"})
                      ).json()["data"]["id"] for name in names]
        ids = [(await http.post("/api/threads", json={"house_id": house, "title": f"t{i}"})).json()["data"]["id"]
               for i in range(args.threads)]
        run = Run()
        url = httpx.URL(gateway_url)
        client = Client(url.host, url.port or 80, token)
        before = snapshot()
        await asyncio.gather(*(thread_loop(client, t, names[i % len(names)], args.rounds, args.warmup, args.sse,
                                           args.interval_ms / 1000, run) for i, t in enumerate(ids)))
        after = snapshot()
        await client.upstream.close()
        return run, agent_ids, {name: after[name] - before[name] for name in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--interval-ms", type=float, default=0.0,
                        help="each thread starts a mention this often (0: the next as soon as the reply is seen)")
    parser.add_argument("--sse", action="store_true", help="live readers use SSE instead of long-polls")
    parser.add_argument("--agents", type=int, default=1,
                        help="echo agents the threads mention (1: all mention the same agent)")
    parser.add_argument("--per-agent", type=int, default=None,
                        help="agents.max_concurrency_per_agent (default: the role default)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    base = temp_base("appliance-bench-agents-")
    settings: dict[str, Any] = {"handler_timeout_s": 30}
    if args.per_agent:
        settings["max_concurrency_per_agent"] = args.per_agent
    try:
        with pg_cluster() as pg:
            env = agents_tenant(base, pg, agents=settings)
            provision(env)
            with streams_server(env.tenant.port("streams"), base / "streams",
                                long_poll_ms=env.tenant.streams.long_poll_timeout_ms) as streams:
                gateway = start_gateway_process(env)
                worker = WorkerProcess(env, None)
                try:
                    worker.start()
                    assert streams.process is not None

                    def snapshot() -> dict[str, float]:
                        usage = resource.getrusage(resource.RUSAGE_SELF)
                        return {"gateway": cpu_seconds(gateway.pid), "agent worker": cpu_seconds(worker.pid),
                                "streams server": cpu_seconds(streams.process.pid),  # type: ignore[union-attr]
                                "postgres": cpu_seconds(pg.process.pid),
                                "bench client": usage.ru_utime + usage.ru_stime}

                    started = time.perf_counter()
                    run, agent_ids, cpu = asyncio.run(bench(env.gateway_url(), env.token(uuid.uuid4(), ttl=3600),
                                                            args, snapshot))
                    elapsed = time.perf_counter() - started
                    per_agent = env.tenant.agents.max_concurrency_per_agent
                finally:
                    worker.stop()
                    stop_process(gateway)
            times: dict[str, tuple[float, float]] = {}
            for agent in agent_ids:
                times.update(inbox_times(store_path(env.tenant.agents_data, uuid.UUID(agent))))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    samples = run.samples
    mentions = args.threads * (args.rounds + args.warmup)
    reader = "SSE" if args.sse else "long-poll"
    pacing = f"one mention per thread every {args.interval_ms:g} ms" if args.interval_ms else "back to back"
    print(f"mention → reply seen by a live {reader} reader through the gateway, echo handler: {args.threads} "
          f"concurrent threads × {args.rounds} rounds ({pacing}), {len(agent_ids)} echo agent(s), {per_agent} "
          f"running per agent; {mentions / elapsed:.0f} mentions/s; load average before the run "
          f"{load_before:.1f} on {os.cpu_count()} cores")
    print(describe("mention → reply seen", [s.total_ms for s in samples]))
    print(describe("POST entry (201)", [s.post_ms for s in samples]))
    staged = [(s, times[s.entry_id]) for s in samples if s.entry_id in times]
    print(describe("  POST → worker accepted", [(t[0] - s.posted_at) * 1000 for s, t in staged]))
    print(describe("  accepted → reply recorded", [(t[1] - t[0]) * 1000 for s, t in staged]))
    print(describe("  accepted → reply seen", [s.total_ms - (t[0] - s.posted_at) * 1000 for s, t in staged]))
    print("CPU per mention: " + ", ".join(f"{name} {seconds / mentions * 1000:.1f} ms" for name, seconds in
                                          cpu.items()) + f" (all {sum(cpu.values()) / mentions * 1000:.1f} ms)")
    p50, p99 = percentile([s.total_ms for s in samples], 50), percentile([s.total_ms for s in samples], 99)
    print(f"targets: p50 < 50 ms ({'met' if p50 < 50 else 'MISSED'}), p99 < 200 ms "
          f"({'met' if p99 < 200 else 'MISSED'})")


if __name__ == "__main__":
    main()
