"""Gateway overhead against direct access, in one run on one machine.

Run: `.venv/bin/python -m tests.bench.bench_gateway [--n 400] [--writers 16] [--seconds 5] [--baseline-ref REF]`

Starts a throwaway Postgres, the streams server, the embedded sync engine (`appliance sync serve`) and the
gateway (`appliance gateway serve`, its own process, as deployed), then measures:

* the floor: GET /healthz, the cheapest request the gateway answers (its CPU per request is what uvicorn and
  FastAPI cost before any of the gateway's own work);
* thread append: POST an entry through the gateway (membership check, entry record + outbox + audit row,
  idempotent append) vs POST of the same message straight to the streams server; 1 writer (latency) and
  `--writers` concurrent writers, one thread each (throughput). Throughput is driven by tests/bench/loadgen.py,
  not httpx: on these 2 shared cores httpx's own ~1.4 ms of CPU per request capped the direct figure at about
  a quarter of what the streams server does. The CPU each process spends per append is printed with it, and
  how many Postgres commits each append through the gateway took (concurrent entries are recorded in groups);
* thread read: GET the stream from an offset through the gateway (membership check, audit grant, proxy) vs
  straight from the streams server;
* shape GET at the tip (immediate up-to-date) and live with no change (long-poll timing out), gateway vs the
  engine with the same table/columns/where/params;
* write -> txid visible: a PATCH through the gateway until a live shape request through the gateway delivers a
  change carrying its txid.

Targets (issue 4): added p50 < 2 ms; appends through the gateway >= 80% of direct throughput; write -> txid
visible p50 < 15 ms. Targets (issue 21), each a ratio to the floor measured in the same run: gateway CPU per shape
GET at the tip and per thread read <= 3x the floor's, per append <= 4x; append throughput through the gateway
>= 0.6 of direct and machine CPU per append through it <= 2.0 ms (printed last, PASS/FAIL).

Process CPU is read in nanoseconds (each process's CPU clock, tests/bench/measure.py), so a few hundred requests
of a fraction of a millisecond each are not rounded to 10 ms ticks; the machine's CPU comes from /proc/stat, in
ticks, and is printed with the bound of that rounding over what was measured.

Before and after in the same run: the tree of `--baseline-ref` (default: where this branch left main, `git
merge-base HEAD main`; `--baseline-ref none` skips it) is exported into a temporary directory (`git archive`, the
repository itself is not touched) and its gateway runs as a second process, with the same venv and
PYTHONPATH pointing at that tree, on another port, against the same Postgres, streams server and sync engine
(a second config dir whose host.json differs only in the gateway port; secrets and data are the tenant's).
Every measurement alternates the two gateways request by request (throughput: run by run), so both see the
same machine; the comparison is printed per request and as ratios after/before. The targets refer to the
gateway of this tree.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance.gateway.api.routes.shapes import shape_where
from appliance.gateway.core.security import Keyring
from appliance.tenantdb.schema import SYNCED_TABLES
from tests.bench.loadgen import post_throughput
from tests.bench.measure import MACHINE_TICK_ERROR, cpu_seconds, machine_cpu_seconds, percentile, scheduling
from tests.support.paths import REPO
from tests.support.pg import pg_cluster
from tests.support.ports import free_port
from tests.support.stack import (
    TenantEnv,
    make_tenant,
    provision,
    remove_base,
    start_gateway_process,
    stop_process,
    streams_server,
    sync_server,
    temp_base,
    wait_http,
)

SYNC_LONG_POLL_MS = 300


# Clients send headers and body in separate writes; without TCP_NODELAY, Nagle holds the body back until the
# headers are acknowledged, which measures the kernel's delayed ACK rather than the servers (browsers set it).
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(socket_options=NODELAY), timeout=30, **kwargs)


def message(index: int) -> dict[str, Any]:
    """A ~200-byte entry, as the gateway stores it."""
    return {"type": "entry", "id": str(uuid.uuid4()), "thread_id": str(uuid.uuid4()), "kind": "message",
            "author": {"id": str(uuid.uuid4()), "kind": "user"}, "text": f"message number {index:06d}",
            "mentions": [], "created_at": "2026-01-01T00:00:00.000000Z"}


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of samples in seconds."""
    return percentile(samples, 50) * 1000, percentile(samples, 99) * 1000


Call = Callable[[int], httpx.Response]


def alternated(n: int, calls: dict[str, tuple[Call, tuple[int, ...]]]) -> dict[str, list[float]]:
    """Each call in turn, request by request (after 20 warm-up rounds), so all see the same machine (others may be
    busy on it); latency samples by name."""
    for i in range(min(20, n)):
        for call, _ in calls.values():
            call(-1 - i)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n):
        for name, (call, expect) in calls.items():
            started = time.perf_counter()
            response = call(i)
            samples[name].append(time.perf_counter() - started)
            if response.status_code not in expect:
                raise RuntimeError(f"unexpected {response.status_code} from {name}: {response.text[:300]}")
    return samples


def report(name: str, direct: list[float], gateway: list[float], cpu_ms: float | None = None) -> dict[str, float]:
    d50, d99 = percentiles(direct)
    g50, g99 = percentiles(gateway)
    cpu = f" | gateway CPU {cpu_ms:4.2f} ms/req" if cpu_ms is not None else ""
    print(f"{name:<34} direct p50 {d50:6.2f} ms p99 {d99:6.2f} | gateway p50 {g50:6.2f} ms p99 {g99:6.2f} | "
          f"added p50 {g50 - d50:5.2f} ms{cpu}")
    result = {"direct_p50_ms": d50, "gateway_p50_ms": g50, "added_p50_ms": g50 - d50}
    if cpu_ms is not None:
        result["gateway_cpu_ms_per_request"] = cpu_ms
    return result


class CpuMeter:
    """CPU used over a block by each named process (ns resolution), by this one (the load generator), and by the
    whole machine (every process and the kernel: what the block took from the machine, including anything else
    running; /proc/stat's clock ticks, off by less than MACHINE_TICK_ERROR)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        self.started = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.own = time.process_time()
        self.machine_started = machine_cpu_seconds()
        self.wall_started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: cpu_seconds(pid) - self.started[name] for name, pid in self.pids.items()}
        self.used["load generator"] = time.process_time() - self.own
        self.machine = machine_cpu_seconds() - self.machine_started
        self.wall = time.perf_counter() - self.wall_started

    def machine_busy(self) -> float:
        """The share of all the machine's CPUs that was busy during the block."""
        return self.machine / (self.wall * (os.cpu_count() or 1))

    def per_request(self, count: int) -> dict[str, float]:
        """Milliseconds of CPU per request, by process."""
        return {name: seconds * 1000 / count for name, seconds in self.used.items()}


def default_baseline() -> str:
    """Where this branch left main: the tree whose gateway the run compares against."""
    return subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


@contextlib.contextmanager
def baseline_tree(ref: str) -> Iterator[Path]:
    """The files of `ref` in a temporary directory (git archive: no worktree registered, nothing checked out)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="appliance-baseline-") as where:
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True,
                                 capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(where, filter="data")
        yield Path(where)


# Run in the baseline tree: its HostConfig's and TenantConfig's fields, and for those that are role settings, the
# settings' fields and role defaults (for the settings its model requires that this tree's host.json lacks).
_BASELINE_MODEL = """
import json
from pydantic import BaseModel
from appliance import config

def describe(model):
    out = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, config._Settings):
            out[name] = {"fields": sorted(kind.model_fields), "defaults": kind.defaults()}
        else:
            out[name] = None
    return out

print(json.dumps({"host": describe(config.HostConfig), "tenant": describe(config.TenantConfig)}, default=str))
"""


def _fit(section: dict[str, Any], model: dict[str, Any]) -> None:
    """Keep only the keys `model` (from _BASELINE_MODEL) knows; settings sections keep only their fields and get
    the defaults of those they lack."""
    for key in [k for k in section if k not in model]:
        del section[key]
    for key, settings in model.items():
        if settings is None or not isinstance(section.get(key), dict):
            continue
        values = section[key]
        section[key] = {**{k: v for k, v in settings["defaults"].items() if k in settings["fields"]},
                        **{k: v for k, v in values.items() if k in settings["fields"]}}


@dataclass(frozen=True)
class Baseline:
    """The baseline tree's gateway: where it answers, its process, and its issuer (its URL: tokens name it)."""

    url: str
    pid: int
    keyring: Keyring


def start_baseline_gateway(env: TenantEnv, tree: Path, port: int) -> subprocess.Popen[bytes]:
    """The baseline tree's `appliance gateway serve` for the same tenant on `port`: a config dir of its own whose
    host.json differs from the tenant's only in the gateway port (same secrets, database, streams, sync)."""
    config_dir = env.base / "etc-baseline"
    config_dir.mkdir(exist_ok=True)
    host = json.loads((env.config_dir / "host.json").read_text())
    tenant = next(t for t in host["tenants"] if t["id"] == env.tenant.id)
    tenant["port_overrides"]["gateway"] = port
    # The tree first on sys.path (and as the working directory, which `-c` puts before it): its `appliance`
    # package shadows the one this venv has installed (editable, found after the path).
    run_env = {**os.environ, "APPLIANCE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(tree)}
    # The baseline reads host.json with its own config model, which forbids keys it does not know and may require
    # settings this tree no longer has: host.json is fitted to that model, as a deploy of the baseline would have
    # written it (unknown keys dropped at every level; missing settings from the baseline's role defaults).
    model = json.loads(subprocess.run([sys.executable, "-c", _BASELINE_MODEL], cwd=tree, env=run_env, check=True,
                                      capture_output=True, text=True).stdout)
    _fit(host, model["host"])
    for each in host["tenants"]:
        _fit(each, model["tenant"])
    (config_dir / "host.json").write_text(json.dumps(host, indent=2))
    where = subprocess.run([sys.executable, "-c", "import appliance.gateway; print(appliance.gateway.__file__)"],
                           cwd=tree, env=run_env, check=True, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(tree)):
        raise RuntimeError(f"the baseline gateway would run {where}, not the tree of the baseline ref")
    log = open(env.base / "bench-gateway-baseline.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [sys.executable, "-c", "from appliance.cli import main; main()", "gateway", "serve", "--tenant",
         env.tenant.id, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=run_env,
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", process=process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="sequential requests per latency measurement")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    parser.add_argument("--gateway-workers", type=int, default=1, help="gateway.workers (uvicorn processes)")
    parser.add_argument("--baseline-ref", default=None,
                        help="git ref whose gateway to compare against in the same run (default: git merge-base "
                             "HEAD main; 'none' to skip)")
    args = parser.parse_args()
    ref = args.baseline_ref or default_baseline()

    results: dict[str, Any] = {}
    base = temp_base("appliance-gw-bench-")
    try:
        with pg_cluster() as pg, contextlib.ExitStack() as stack:
            tree = stack.enter_context(baseline_tree(ref)) if ref != "none" else None
            env = make_tenant(base, pg=pg, gateway={"workers": args.gateway_workers})
            provision(env)
            with streams_server(env.tenant.port("streams"), base / "streams",
                                long_poll_ms=env.tenant.streams.long_poll_timeout_ms) as streams, \
                    sync_server(env, long_poll_ms=SYNC_LONG_POLL_MS):
                gateway_process = start_gateway_process(env, "bench-gateway.log")
                baseline: Baseline | None = None
                baseline_process: subprocess.Popen[bytes] | None = None
                assert streams.process is not None
                try:
                    if tree is not None:
                        port = free_port()
                        baseline_process = start_baseline_gateway(env, tree, port)
                        tenant = env.tenant.model_copy(
                            update={"port_overrides": {**env.tenant.port_overrides, "gateway": port}})
                        baseline = Baseline(f"http://127.0.0.1:{port}", baseline_process.pid,
                                            Keyring.for_tenant(tenant))
                        results["baseline_ref"] = ref
                    pids = {"gateway": gateway_process.pid, "postgres": pg.process.pid,
                            "streams": streams.process.pid}
                    run(env, streams.url, args, results, pids, baseline)
                finally:
                    stop_process(gateway_process)
                    if baseline_process is not None:
                        stop_process(baseline_process)
    finally:
        remove_base(base)
    print(json.dumps(results, indent=2))
    print()
    if "baseline" in results:
        compare(results)
        print()
    targets(results)


def compare(results: dict[str, Any]) -> None:
    """This tree's gateway against the baseline's, measured alternately in this run."""
    before = results["baseline"]
    print(f"before ({results['baseline_ref'][:12]}) / after (this tree), same run:")
    rows = [("gateway CPU, GET /healthz (floor)", "floor"), ("gateway CPU, shape GET at tip", "shape_tip"),
            ("gateway CPU, thread read", "read"), ("gateway CPU, thread append (1 writer)", "append")]
    for name, key in rows:
        b, a = before[key]["gateway_cpu_ms_per_request"], results[key]["gateway_cpu_ms_per_request"]
        print(f"{name:<40} before {b:5.3f} ms  after {a:5.3f} ms  after/before {a / b:4.2f}")
    b_rate, a_rate = before["append_throughput"]["per_s"], results["append_throughput"]["gateway_per_s"]
    print(f"{'append throughput':<40} before {b_rate:5.0f}/s  after {a_rate:5.0f}/s  after/before "
          f"{a_rate / b_rate:4.2f} (direct {results['append_throughput']['direct_per_s']:.0f}/s)")
    b_cpu = before["append_throughput"]["machine_cpu_ms_per_append"]
    a_cpu = results["append_throughput"]["machine_cpu_ms_per_append"]["gateway"]
    print(f"{'machine CPU per append':<40} before {b_cpu:5.2f} ms  after {a_cpu:5.2f} ms  after/before "
          f"{a_cpu / b_cpu:4.2f}")
    b_gw = before["append_throughput"]["cpu_ms_per_append"]["baseline"]
    a_gw = results["append_throughput"]["cpu_ms_per_append"]["gateway"]["gateway"]
    print(f"{'gateway CPU per append (concurrent)':<40} before {b_gw:5.2f} ms  after {a_gw:5.2f} ms  after/before "
          f"{a_gw / b_gw:4.2f}")

def targets(results: dict[str, Any]) -> None:
    """Issue 21's targets, each against the floor (or direct access) measured in this run."""
    floor = results["floor"]["gateway_cpu_ms_per_request"]
    throughput = results["append_throughput"]
    checks = [
        ("gateway CPU, shape GET at tip", results["shape_tip"]["gateway_cpu_ms_per_request"] / floor, 3.0, "x floor"),
        ("gateway CPU, thread read", results["read"]["gateway_cpu_ms_per_request"] / floor, 3.0, "x floor"),
        ("gateway CPU, thread append", results["append"]["gateway_cpu_ms_per_request"] / floor, 4.0, "x floor"),
    ]
    print(f"floor: GET /healthz costs {floor:.3f} ms of gateway CPU")
    for name, value, limit, unit in checks:
        print(f"{name:<40} {value:5.2f} {unit} (target <= {limit:.1f}): {'PASS' if value <= limit else 'FAIL'}")
    ratio = throughput["ratio"]
    print(f"{'append throughput, gateway / direct':<40} {ratio:5.2f} (target >= 0.60): "
          f"{'PASS' if ratio >= 0.6 else 'FAIL'}")
    machine = throughput["machine_cpu_ms_per_append"]["gateway"]
    error = throughput["machine_cpu_tick_error"]["gateway"]
    print(f"{'machine CPU per append through gateway':<40} {machine:5.2f} ms (target <= 2.00; direct "
          f"{throughput['machine_cpu_ms_per_append']['direct']:.2f}; tick error <= {error:.1%}): "
          f"{'PASS' if machine <= 2.0 else 'FAIL'}")


def run(env: Any, streams_url: str, args: argparse.Namespace, results: dict[str, Any], pids: dict[str, int],
        baseline: Baseline | None) -> None:
    """Every measurement, this tree's gateway ("gateway") alternated with direct access and, when given, with the
    baseline tree's gateway ("baseline": its URL and PID); the baseline's figures go to results["baseline"]."""
    gateways = {"gateway": pids["gateway"], **({"baseline": baseline.pid} if baseline else {})}
    gateway = env.gateway_url()
    principal = uuid.uuid4()
    auth = {"Authorization": f"Bearer {env.token(principal, ttl=3600)}"}
    api = client(base_url=gateway, headers=auth)
    old_auth = {"Authorization": f"Bearer {baseline.keyring.issue(principal, 3600)}"} if baseline else {}
    old = client(base_url=baseline.url, headers=old_auth) if baseline else None
    direct = client(base_url=streams_url)
    before: dict[str, Any] = {}
    if baseline:
        results["baseline"] = before
    house = api.post("/api/houses", json={"name": "bench"}).json()["data"]["id"]
    print(f"gateway {gateway} ({args.gateway_workers} worker(s)){f', baseline {baseline.url}' if baseline else ''}, "
          f"streams {streams_url}, {args.n} requests per latency figure, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs\n")

    def through(path: Callable[[int], str], send: Callable[[httpx.Client, str, int], httpx.Response],
                expect: tuple[int, ...]) -> dict[str, tuple[Call, tuple[int, ...]]]:
        """The same request through each gateway."""
        calls: dict[str, tuple[Call, tuple[int, ...]]] = {"gateway": (lambda i: send(api, path(i), i), expect)}
        if old is not None:
            calls["baseline"] = (lambda i: send(old, path(i), i), expect)
        return calls

    def measured(name: str, key: str, calls: dict[str, tuple[Call, tuple[int, ...]]], n: int
                 ) -> dict[str, list[float]]:
        with CpuMeter(gateways) as meter:
            samples = alternated(n, calls)
        cpu = meter.per_request(n + min(20, n))
        results[key] = report(name, samples["direct"], samples["gateway"], cpu["gateway"])
        if "baseline" in samples:
            before[key] = report("  the same, baseline gateway", samples["direct"], samples["baseline"],
                                 cpu["baseline"])
        return samples

    # -- the floor: what any request through a gateway process costs (uvicorn, FastAPI, no auth, no I/O) --------
    with CpuMeter(gateways) as meter:
        floor = alternated(args.n, through(lambda i: "/healthz", lambda c, p, i: c.get(p), (200,)))
    for name, samples in floor.items():
        f50, f99 = percentiles(samples)
        floor_cpu = meter.per_request(args.n + min(20, args.n))[name]
        label = "GET /healthz (floor, no auth/I/O)" if name == "gateway" else "  the same, baseline gateway"
        print(f"{label:<34} {'':<32}| gateway p50 {f50:6.2f} ms p99 {f99:6.2f} | "
              f"{'':<19}| gateway CPU {floor_cpu:4.2f} ms/req")
        (results if name == "gateway" else before)["floor"] = {"gateway_p50_ms": f50,
                                                                "gateway_cpu_ms_per_request": floor_cpu}

    # -- thread append, 1 writer ------------------------------------------------------------------------
    direct_stream = f"/thread-{uuid.uuid4()}"
    direct.put(direct_stream, headers={"content-type": "application/json"}).raise_for_status()
    thread = api.post("/api/threads", json={"house_id": house}).json()["data"]["id"]
    calls = {"direct": (lambda i: direct.post(direct_stream, json=message(i)), (200, 204)),
             **through(lambda i: f"/api/threads/{thread}/entries",
                       lambda c, p, i: c.post(p, json={"id": str(uuid.uuid4()), "text": f"message number {i:06d}"}),
                       (201,))}
    appends = measured("thread append (1 writer)", "append", calls, args.n)

    # -- thread read --------------------------------------------------------------------------------------
    tail = api.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}).headers["stream-next-offset"]
    offset = tail.split("_")[0] + "_" + str(max(0, int(tail.split("_")[1]) - 2000)).zfill(len(tail.split("_")[1]))
    calls = {"direct": (lambda i: direct.get(f"/thread-{thread}", params={"offset": offset}), (200,)),
             **through(lambda i: f"/api/threads/{thread}/stream",
                       lambda c, p, i: c.get(p, params={"offset": offset}), (200,))}
    reads = measured("thread read (catch-up, ~2 KB)", "read", calls, args.n)
    pair_direct = [a + r for a, r in zip(appends["direct"], reads["direct"], strict=False)]
    pair_gateway = [a + r for a, r in zip(appends["gateway"], reads["gateway"], strict=False)]
    results["append_plus_read"] = report("thread append + read", pair_direct, pair_gateway)

    # -- append throughput, concurrent writers (one thread each) ------------------------------------------
    direct_streams = [f"/thread-{uuid.uuid4()}" for _ in range(args.writers)]
    for path in direct_streams:
        direct.put(path, headers={"content-type": "application/json"}).raise_for_status()
    threads = [api.post("/api/threads", json={"house_id": house}).json()["data"]["id"]
               for _ in range(args.writers)]

    def entry(i: int, n: int) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "text": f"message number {n:06d}"}

    others = {"postgres": pids["postgres"], "streams": pids["streams"]}
    runs = {
        "direct": (streams_url, lambda i: direct_streams[i], lambda i, n: message(n), {}, {"streams": pids["streams"]}),
        "gateway": (gateway, lambda i: f"/api/threads/{threads[i]}/entries", entry, auth,
                    {"gateway": pids["gateway"], **others}),
    }
    if baseline:
        runs["baseline"] = (baseline.url, lambda i: f"/api/threads/{threads[i]}/entries", entry, old_auth,
                            {"baseline": baseline.pid, **others})
    rates: dict[str, list[float]] = {path: [] for path in runs}
    spent: dict[str, list[dict[str, float]]] = {path: [] for path in runs}
    commits: list[float] = []  # Postgres commits per append through the gateway: how well entries are grouped
    machine: dict[str, list[tuple[float, float, int]]] = {path: [] for path in runs}  # (busy, CPU s, appends)
    # The streams server's threads: on a CPU, waiting for one, times scheduled in (differences over each run).
    streams_sched: dict[str, list[tuple[float, float, int, int]]] = {path: [] for path in runs}
    for _ in range(2):  # alternated, so all see the same machine
        for path, (base_url, path_for, body_for, headers, pids_measured) in runs.items():
            started = committed(env)
            sched_before = scheduling(pids["streams"])
            with CpuMeter(pids_measured) as meter:
                rate, count = post_throughput(base_url, path_for, body_for, headers, args.writers, args.seconds / 2)
            sched_after = scheduling(pids["streams"])
            streams_sched[path].append((sched_after[0] - sched_before[0], sched_after[1] - sched_before[1],
                                        sched_after[2] - sched_before[2], count))
            rates[path].append(rate)
            spent[path].append(meter.per_request(count))
            machine[path].append((meter.machine_busy(), meter.machine, count))
            if path == "gateway":
                commits.append((committed(env) - started) / count)
    rate_of = {path: statistics.mean(r) for path, r in rates.items()}
    direct_rate, gateway_rate = rate_of["direct"], rate_of["gateway"]
    ratio = gateway_rate / direct_rate
    old_rate = f" | baseline gateway {rate_of['baseline']:7.0f}/s" if baseline else ""
    print(f"{'append throughput (' + str(args.writers) + ' writers)':<34} direct {direct_rate:7.0f}/s | "
          f"gateway {gateway_rate:7.0f}/s | ratio {ratio:.2f}{old_rate} (load average {os.getloadavg()[0]:.1f})")
    cpu = {path: {name: statistics.mean(run[name] for run in measured_) for name in measured_[0]}
           for path, measured_ in spent.items()}
    for path, used in cpu.items():
        print(f"{'  CPU ms per append, ' + path:<34} " + ", ".join(f"{k} {v:.2f}" for k, v in used.items()) +
              f" (total {sum(used.values()):.2f})")
    print(f"{'  Postgres commits per append':<34} {statistics.mean(commits):.2f} (each group of entries commits its "
          "record, then its step 4)")
    busy = {path: statistics.mean(b for b, _, _ in runs_) for path, runs_ in machine.items()}
    whole = {path: sum(s for _, s, _ in runs_) * 1000 / sum(n for _, _, n in runs_) for path, runs_ in machine.items()}
    # /proc/stat counts in ticks: each run's difference is off by less than MACHINE_TICK_ERROR seconds.
    tick_error = {path: len(runs_) * MACHINE_TICK_ERROR / sum(s for _, s, _ in runs_)
                  for path, runs_ in machine.items()}
    cpus = os.cpu_count() or 1
    print(f"{'  machine CPU busy (all processes)':<34} " + ", ".join(f"{p} {b:.0%}" for p, b in busy.items()) +
          f" of {cpus} CPUs; machine CPU ms per append: " + ", ".join(f"{p} {w:.2f}" for p, w in whole.items()))
    # What the processes measured above do not account for: anything else running on this machine meanwhile (on a
    # shared VM, others' work) and the kernel's own (interrupts, softirq network processing not charged to them).
    other = {path: whole[path] - sum(cpu[path].values()) for path in whole}
    print(f"{'  machine CPU outside those':<34} " + ", ".join(f"{p} {o:.2f}" for p, o in other.items()) +
          " ms per append (other processes on this machine, the kernel's own work)")
    print(f"{'  machine CPU tick error, at most':<34} " + ", ".join(f"{p} {e:.1%}" for p, e in tick_error.items()) +
          f" (/proc/stat's {len(machine['gateway'])} x {MACHINE_TICK_ERROR * 1000:.0f} ms over the machine CPU "
          "measured; process CPU is in ns)")
    # What the target asks of this machine at the gateway path's measured cost: when it is above the CPUs there
    # are, the ratio is bounded by the machine, not by waiting anywhere.
    needed = 0.8 * direct_rate * whole["gateway"] / 1000
    print(f"{'  CPUs needed for ratio 0.80':<34} {needed:.1f} (0.80 x {direct_rate:.0f}/s x "
          f"{whole['gateway']:.2f} ms of machine CPU per append through the gateway); this machine has {cpus}")
    # The streams server takes one append at a time, and so does the entries' group recording (one group at a time,
    # under the audit chain head): two serial stages sharing the CPUs with the gateway. Direct, the server has the
    # machine to itself; through the gateway every time it is woken (each append's write, fsync and metadata commit)
    # it may wait for a CPU. Those waits are a symptom, not the bound: with the server at real-time priority (tried
    # by hand, not here) its waits all but vanished and the throughput stayed the same, as the group recording then
    # took twice as long per group.
    waits: dict[str, tuple[float, float, float]] = {}
    for path, runs_ in streams_sched.items():
        appends = sum(run[3] for run in runs_)
        waits[path] = (sum(run[0] for run in runs_) * 1000 / appends, sum(run[1] for run in runs_) * 1000 / appends,
                       sum(run[2] for run in runs_) / appends)
    print(f"{'  streams server, per append':<34} " + "; ".join(
        f"{p} {on:.2f} ms on a CPU, {queued:.2f} ms waiting for one, scheduled in {slices:.1f} times"
        for p, (on, queued, slices) in waits.items()))
    mine = ("direct", "gateway")
    results["append_throughput"] = {"direct_per_s": direct_rate, "gateway_per_s": gateway_rate, "ratio": ratio,
                                    "cpu_ms_per_append": {p: cpu[p] for p in mine},
                                    "commits_per_append": statistics.mean(commits),
                                    "machine_busy": {p: busy[p] for p in mine},
                                    "machine_cpu_ms_per_append": {p: whole[p] for p in mine},
                                    "machine_cpu_tick_error": {p: tick_error[p] for p in mine},
                                    "machine_cpu_ms_outside_measured": {p: other[p] for p in mine},
                                    "cpus_needed_for_target": needed,
                                    "streams_ms_per_append": {p: {"on_cpu": waits[p][0], "waiting_for_cpu": waits[p][1],
                                                                  "scheduled_in": waits[p][2]} for p in mine}}
    if baseline:
        before["append_throughput"] = {"per_s": rate_of["baseline"], "ratio": rate_of["baseline"] / direct_rate,
                                       "cpu_ms_per_append": cpu["baseline"], "machine_busy": busy["baseline"],
                                       "machine_cpu_ms_per_append": whole["baseline"]}

    # -- shapes ---------------------------------------------------------------------------------------------
    sync = client(base_url=f"http://127.0.0.1:{env.tenant.port('sync')}")
    where, where_params = shape_where([uuid.UUID(house)])
    engine_params = [("table", "threads"), ("columns", ",".join(SYNCED_TABLES["threads"])), ("where", where),
                     *where_params, ("secret", env.tenant.read_secret("sync_secret"))]
    first = api.get("/api/shapes/threads", params={"offset": "-1"})
    handle, tip = first.headers["electric-handle"], first.headers["electric-offset"]
    while "electric-up-to-date" not in first.headers:
        first = api.get("/api/shapes/threads", params={"offset": tip, "handle": handle})
        tip = first.headers["electric-offset"]
    protocol = [("offset", tip), ("handle", handle)]
    calls = {"direct": (lambda i: sync.get("/v1/shape", params=[*engine_params, *protocol]), (200,)),
             **through(lambda i: "/api/shapes/threads", lambda c, p, i: c.get(p, params=protocol), (200,))}
    measured("shape GET at tip (up-to-date)", "shape_tip", calls, args.n)
    live = [*protocol, ("live", "true")]
    n_live = max(20, args.n // 10)
    samples = alternated(n_live, {
        "direct": (lambda i: sync.get("/v1/shape", params=[*engine_params, *live]), (200, 204)),
        "gateway": (lambda i: api.get("/api/shapes/threads", params=live), (200, 204))})
    results["shape_live_no_change"] = report(f"shape GET live, no change ({SYNC_LONG_POLL_MS} ms)",
                                             samples["direct"], samples["gateway"])

    # -- write -> txid visible through the gateway ----------------------------------------------------------
    results["write_to_txid_visible"] = txid_visibility(api, thread, handle, tip, max(30, args.n // 10))


def committed(env: Any) -> int:
    """Transactions committed so far in the tenant's database (the gateway's, and the few of its background
    tasks and of the sync engine in the same time)."""
    with env.superuser() as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def txid_visibility(api: httpx.Client, thread: str, handle: str, offset: str, writes: int) -> dict[str, float]:
    """A live shape follower (its own connection) and a writer: time from the write's request to the live
    response that carries its txid."""
    seen: dict[int, float] = {}
    stop = threading.Event()
    position = {"offset": offset, "handle": handle}

    def follow() -> None:
        with client(base_url=str(api.base_url), headers=dict(api.headers)) as follower:
            while not stop.is_set():
                response = follower.get("/api/shapes/threads", params={**position, "live": "true"})
                now = time.perf_counter()
                if response.status_code == 200:
                    for item in response.json():
                        for txid in item.get("headers", {}).get("txids", []):
                            seen.setdefault(int(txid), now)
                position["offset"] = response.headers.get("electric-offset", position["offset"])

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    samples = []
    for i in range(writes):
        started = time.perf_counter()
        txid = api.patch(f"/api/threads/{thread}", json={"title": f"title {i}"}).json()["txid"]
        deadline = time.monotonic() + 10
        while txid not in seen and time.monotonic() < deadline:
            time.sleep(0.0005)
        if txid not in seen:
            raise RuntimeError(f"txid {txid} never arrived")
        samples.append(seen[txid] - started)
    stop.set()
    p50, p99 = percentiles(samples)
    print(f"{'write -> txid visible (gateway)':<34} p50 {p50:6.2f} ms p99 {p99:6.2f} ms ({writes} writes)")
    return {"p50_ms": p50, "p99_ms": p99}


if __name__ == "__main__":
    main()
