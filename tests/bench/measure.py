"""What the benchmarks measure with, defined once so their figures mean the same thing.

- `percentile`: nearest rank (the value at rank ceil(p/100 × n)), the definition every p50/p99 printed uses;
- `cpu_seconds`: CPU time of a process (all its threads, those that ended too) and of its direct children still
  running, in nanoseconds (the kernel's per-process CPU clock, what clock_gettime(CLOCK_PROCESS_CPUTIME_ID) reads
  in the process itself), not in /proc/<pid>/stat's clock ticks: a ratio of two small figures is not quantised;
- `machine_cpu_seconds`: CPU time every CPU of the machine spent busy (any process, the kernel), from /proc/stat,
  in clock ticks: `MACHINE_TICK_ERROR` bounds the error of a difference of two readings;
- `rss_bytes` / `tree_memory`: resident memory of a process, and RSS and PSS of a whole process tree;
- `scheduling`: how long a process's threads ran, waited on a run queue for a CPU, and how many times they were
  scheduled in (/proc/<pid>/task/*/schedstat): what a process that serialises its work loses to others when the
  machine is shared.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# The busy fields of /proc/stat's cpu line (user, nice, system, irq, softirq, steal): the kernel keeps them in ns and
# prints each rounded down to a tick, so a difference of two readings is off by less than a tick per field.
_BUSY_FIELDS = 6
MACHINE_TICK_ERROR = _BUSY_FIELDS / _TICKS
_CPUCLOCK_SCHED = 2  # the kernel's encoding of another process's CPU clock: MAKE_PROCESS_CPUCLOCK(pid, SCHED)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


def _stat_fields(proc: Path) -> list[str]:
    # After the last ')' (the command name may hold spaces and parentheses): state, ppid, ..., utime, stime.
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_ns(pid: int) -> int:
    """CPU time so far of process `pid`, all its threads (live or ended), in ns: its CPU clock (as
    clock_getcpuclockid(pid) names it; Python has no binding, the id is the kernel's encoding)."""
    return time.clock_gettime_ns((~pid << 3) | _CPUCLOCK_SCHED)


def cpu_seconds(pid: int) -> float:
    """CPU so far of `pid` and its children still running (uvicorn workers, Postgres backends), ns resolution."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.name == str(pid) or _stat_fields(proc)[1] == str(pid):
                total += process_cpu_ns(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return total / 1e9


def scheduling(pid: int) -> tuple[float, float, int]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU, times scheduled in) so far, over the live threads
    of `pid` (the kernel's schedstat, in ns)."""
    ran = waited = runs = 0
    for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
        try:
            on_cpu, on_queue, slices = (int(value) for value in (task / "schedstat").read_text().split())
        except (OSError, ValueError):  # gone meanwhile
            continue
        ran, waited, runs = ran + on_cpu, waited + on_queue, runs + slices
    return ran / 1e9, waited / 1e9, runs


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, over all its CPUs: everything but idle and iowait
    (guest time is already inside user time, so only the first eight fields count)."""
    with open("/proc/stat") as fh:
        ticks = [int(value) for value in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


def status_kb(proc: Path, field: str, name: str = "status") -> int:
    """A `<field>: <n> kB` line of /proc/<pid>/status (or smaps_rollup); 0 when absent."""
    for line in (proc / name).read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return status_kb(Path("/proc") / str(pid), "VmRSS:") * 1024


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of a process and all its descendants. RSS counts pages shared between them (Postgres'
    shared buffers) once per process; PSS splits each shared page between its sharers, so PSS sums honestly."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            children.setdefault(int(_stat_fields(proc)[1]), []).append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    rss = pss = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        proc = Path("/proc") / str(current)
        try:
            rss += status_kb(proc, "VmRSS:") * 1024
            pss += status_kb(proc, "Pss:", "smaps_rollup") * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return rss, pss
