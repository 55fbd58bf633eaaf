"""The benchmarks' meters: the figures they print are only as good as these."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bench.measure import cpu_seconds, machine_cpu_seconds, percentile, scheduling


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


def test_scheduling_counts_cpu_and_waiting_for_it() -> None:
    """Two busy processes pinned to one CPU: while one runs the other waits for it, so each is always either on
    the CPU or waiting for it, and waits about as long as it runs."""
    cpu = min(os.sched_getaffinity(0))
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                preexec_fn=lambda: os.sched_setaffinity(0, {cpu})) for _ in range(2)]
    try:
        time.sleep(0.2)
        before, started = scheduling(burners[0].pid), time.monotonic()
        time.sleep(0.5)
        after, wall = scheduling(burners[0].pid), time.monotonic() - started
        on_cpu, waited, runs = (a - b for a, b in zip(after, before, strict=True))
        figures = f"on a CPU {on_cpu:.3f} s, waiting {waited:.3f} s, {runs} runs in {wall:.3f} s"
        assert 0.9 * wall <= on_cpu + waited <= 1.1 * wall, figures  # never anything but runnable
        assert 0.2 * wall <= on_cpu <= 0.8 * wall and waited >= 0.2 * wall, figures  # sharing one CPU
        assert runs >= 2, figures
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
