"""The benchmarks' meters: the figures they print are only as good as these."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bench.measure import cpu_seconds, machine_cpu_seconds, percentile


def _burn(seconds: float) -> None:
    stop = time.process_time() + seconds
    while time.process_time() < stop:
        pass


def test_the_machine_meter_counts_at_least_what_this_process_burns_and_no_more_than_every_cpu() -> None:
    machine_before, own_before, wall_before = machine_cpu_seconds(), cpu_seconds(os.getpid()), time.monotonic()
    _burn(0.5)
    machine = machine_cpu_seconds() - machine_before
    own = cpu_seconds(os.getpid()) - own_before
    wall = time.monotonic() - wall_before
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert own >= 0.4
    assert machine >= own - 2 * tick  # the machine's counters tick on their own; allow a tick either side
    assert machine <= wall * (os.cpu_count() or 1) + 2 * tick


def test_process_cpu_counts_ended_threads_with_sub_tick_resolution() -> None:
    """Another process's CPU, threads that already ended included, and not rounded to /proc/<pid>/stat's ticks."""
    burner = subprocess.Popen(
        [sys.executable, "-c", "import sys, threading, time\n"
         "def burn():\n    stop = time.thread_time() + 0.2\n    while time.thread_time() < stop: pass\n"
         "t = threading.Thread(target=burn); t.start(); t.join()\n"
         "print(time.process_time(), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert burner.stdout is not None
        own = float(burner.stdout.readline())  # what the process says it used, its thread ended
        seen = cpu_seconds(burner.pid)
        assert own >= 0.2
        assert own <= seen <= own + 0.05
        readings = {cpu_seconds(burner.pid) for _ in range(5)}  # idle, but the clock is not stuck on tick multiples
        assert any(round(value * os.sysconf("SC_CLK_TCK")) != value * os.sysconf("SC_CLK_TCK") for value in readings)
    finally:
        assert burner.stdin is not None
        burner.stdin.close()
        burner.wait()


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
