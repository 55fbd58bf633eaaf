"""Backup figures for a tenant holding ~1 GB in Postgres and ~10k stream entries: backup seconds, drill
seconds (RTO), and RPO under a steady write load.

Run (root, supervisord running, as the backup tests need): `.venv/bin/python -m tests.bench.bench_backup
[--gb 1.0] [--entries 10000] [--rate 100] [--rpo-seconds 150] [--archive-timeout 60]`.

Targets (issue 7): drill (RTO) < 3 min on this machine; RPO <= archive_timeout. The tenant, its store and its
files are the test rig's (tests/support/backup.py): everything real, on loopback, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from typing import Any

import httpx

from appliance.backup.archive import recovery_point
from appliance.backup.drill import run_drill
from appliance.backup.take import take_backup
from tests.support.backup import Rig, add_house, backup_rig

T = "bktbench"
ROWS_PER_GB = 4_200_000  # ~240 bytes per notes row with its index, measured by pg_database_size


def load(rig: Rig, gigabytes: float, entries: int) -> dict[str, Any]:
    tenant = rig.tenant(T)
    rows = int(ROWS_PER_GB * gigabytes)
    started = time.monotonic()
    with rig.connect(T) as conn:
        house = add_house(conn, "bench")
        for start in range(0, rows, 500_000):
            # Hex text of several hashes: compressible about as much as real text is, not as much as repeats.
            conn.execute(
                "insert into notes (house_id, body) select %s, md5(g::text) || md5((g * 7)::text) || "
                "md5((g * 13)::text) || md5((g * 31)::text) || ' note ' || g "
                "from generate_series(%s, %s) g", (house, start, min(rows, start + 500_000) - 1))
        conn.execute("checkpoint")
        size = conn.execute("select pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    threads = max(1, entries // 100)
    with httpx.Client(timeout=30) as client:
        for t in range(threads):
            thread = uuid.uuid4()
            with rig.connect(T) as conn:
                conn.execute("insert into threads (id, house_id, title) values (%s, %s, %s)", (thread, house, "t"))
            url = f"http://127.0.0.1:{tenant.port('streams')}/thread-{thread}"
            client.put(url, content=b"[]", headers={"content-type": "application/json"}).raise_for_status()
            batch = [{"id": str(uuid.uuid4()), "role": "user", "text": f"message {n} of thread {t}: " + "lorem " * 40}
                     for n in range(100)]
            client.post(url, content=json.dumps(batch).encode(),
                        headers={"content-type": "application/json"}).raise_for_status()
    return {"db_bytes": size, "rows": rows, "threads": threads, "entries": threads * 100,
            "load_s": round(time.monotonic() - started, 1)}


class SteadyLoad:
    """`rate` single-row transactions per second, paced, until stopped."""

    def __init__(self, rig: Rig, rate: float) -> None:
        self.rig, self.rate = rig, rate
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.rig.connect(T) as conn:
            house = add_house(conn, "steady")
            started = time.monotonic()
            while not self.stop.is_set():
                conn.execute("insert into notes (house_id, body) values (%s, 'steady')", (house,))
                self.done += 1
                lag = started + self.done / self.rate - time.monotonic()
                if lag > 0:
                    self.stop.wait(lag)

    def __enter__(self) -> SteadyLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size to load (GB)")
    parser.add_argument("--entries", type=int, default=10_000, help="stream entries (100 per thread)")
    parser.add_argument("--rate", type=float, default=100, help="steady write load, transactions/s")
    parser.add_argument("--rpo-seconds", type=float, default=150, help="how long to sample the RPO")
    parser.add_argument("--archive-timeout", type=int, default=60, help="backup_archive_timeout_s")
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    with backup_rig((T,), {T: {"backup": {"archive_timeout_s": args.archive_timeout}}}) as rig:
        tenant = rig.tenant(T)
        figures["data"] = load(rig, args.gb, args.entries)
        print(f"loaded: {figures['data']}", flush=True)
        with SteadyLoad(rig, args.rate) as steady:
            full = take_backup(rig.host, tenant, "full")
            figures["full_backup_s"] = round(full.backup_seconds, 1)
            figures["full_backup_repo_bytes"] = full.backup.repo_size
            figures["bundle_s"] = round(full.bundle_seconds, 1)
            figures["bundle_bytes"] = full.bundle.size
            print(f"full backup under load: {full.summary()}", flush=True)
            diff = take_backup(rig.host, tenant, "diff")
            figures["diff_backup_s"] = round(diff.backup_seconds, 1)

            samples = []
            deadline = time.monotonic() + args.rpo_seconds
            while time.monotonic() < deadline:
                point = recovery_point(tenant)
                if point.rpo_s is not None:
                    samples.append(point.rpo_s)
                time.sleep(5)
            figures["rpo_s"] = {"max": round(max(samples), 1), "mean": round(statistics.mean(samples), 1),
                                "p50": round(statistics.median(samples), 1), "samples": len(samples),
                                "archive_timeout_s": args.archive_timeout}

            started = time.monotonic()
            report = run_drill(rig.host, tenant)
            figures["drill_s"] = round(time.monotonic() - started, 1)
            figures["drill_rto_s"] = round(report.rto_s or -1, 1)
            figures["drill_rpo_s"] = report.rpo.get("rpo_s")
            figures["drill_ok"] = report.ok
            figures["steady_tx"] = steady.done
            print(report.summary(), flush=True)
            for check in report.checks:
                if check.name == "pgbackrest verify":
                    figures["verify_detail"] = check.detail

    rpo = figures["rpo_s"]
    print("\n== backup benchmark ==")
    print(f"database            {figures['data']['db_bytes'] / 1e9:.2f} GB ({figures['data']['rows']} rows), "
          f"{figures['data']['entries']} stream entries in {figures['data']['threads']} threads")
    print(f"full backup         {figures['full_backup_s']}s ({figures['full_backup_repo_bytes'] / 1e6:.0f} MB in "
          f"the repository), bundle {figures['bundle_s']}s ({figures['bundle_bytes'] / 1e6:.1f} MB)")
    print(f"diff backup         {figures['diff_backup_s']}s")
    print(f"drill               {figures['drill_s']}s total, RTO {figures['drill_rto_s']}s "
          f"(target < 180s: {'met' if figures['drill_rto_s'] < 180 else 'MISSED'}), passed: {figures['drill_ok']}")
    print(f"RPO at {args.rate:.0f} tx/s  max {rpo['max']}s, mean {rpo['mean']}s, p50 {rpo['p50']}s over "
          f"{rpo['samples']} samples (target <= archive_timeout {args.archive_timeout}s: "
          f"{'met' if rpo['max'] <= args.archive_timeout else 'MISSED'})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
