"""Shape log throughput: append+sync at batch sizes 1 and 100, reads, tail reads, and reopen (recovery scan).

Run: `.venv/bin/python -m tests.bench.bench_shapelog [--dir DIR] [--seconds S] [--messages N]`.
DIR must be on the disk the engine will use: fsync cost is what is measured (tmpfs would flatter it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from appliance.sync.offsets import BEFORE_ALL, LogOffset
from appliance.sync.shapelog import ShapeLog

MESSAGE_BYTES = 200


def message(offset: LogOffset) -> bytes:
    head = (
        f'{{"key":"\\"public\\".\\"items\\"/\\"{offset.tx}\\"","headers":{{"operation":"insert",'
        f'"relation":["public","items"],"lsn":"{offset.tx}","op_position":{offset.op}}},"value":{{"pad":"'
    )
    return (head + "x" * max(0, MESSAGE_BYTES - len(head) - 3) + '"}}').encode()


def bench_append_sync(directory: Path, batch: int, seconds: float) -> tuple[float, float, int]:
    """Messages/s and syncs/s appending `batch` messages then syncing, for about `seconds`."""
    with ShapeLog.open(directory) as log:
        lsn = 1
        messages = syncs = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            entries = []
            for op in range(batch):
                offset = LogOffset.live(lsn, op)
                entries.append((offset, message(offset)))
            lsn += 1
            log.append(entries)
            log.sync()
            messages += batch
            syncs += 1
        elapsed = time.perf_counter() - started
    return messages / elapsed, syncs / elapsed, messages


def build_log(directory: Path, count: int) -> None:
    """`count` snapshot-style messages, synced every 1000 (as a snapshot writer would per chunk)."""
    with ShapeLog.open(directory) as log:
        for start in range(0, count, 1000):
            log.append(
                (LogOffset.snapshot_chunk(i), message(LogOffset.snapshot_chunk(i)))
                for i in range(start, min(count, start + 1000))
            )
            log.sync()


def timed(function: Callable[[], object], repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the scratch directory")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each append+sync run")
    parser.add_argument("--messages", type=int, default=200_000, help="size of the log for read benchmarks")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-shapelog-", dir=args.dir))
    try:
        fs = subprocess.run(["df", "-T", str(scratch)], capture_output=True, text=True).stdout.splitlines()[-1]
        print(f"scratch: {scratch}  ({' '.join(fs.split()[:2])}), {MESSAGE_BYTES}-byte messages, cpus={os.cpu_count()}")

        for batch in (1, 100):
            rate, sync_rate, total = bench_append_sync(scratch / f"append-{batch}", batch, args.seconds)
            print(
                f"append+sync batch={batch:<4} {rate:>10,.0f} msg/s  {sync_rate:>8,.0f} syncs/s  ({total:,} messages)"
            )

        count = args.messages
        log_dir = scratch / "read"
        build_seconds = timed(lambda: build_log(log_dir, count))
        print(f"build {count:,} messages (append, sync per 1000): {count / build_seconds:>10,.0f} msg/s")

        opened: list[ShapeLog] = []
        open_seconds = timed(lambda: opened.append(ShapeLog.open(log_dir)))
        log = opened[0]
        print(f"open + recovery scan of {log.size_bytes / 1e6:.1f} MB: {open_seconds * 1000:,.0f} ms")

        def read_everything() -> int:
            after, seen = BEFORE_ALL, 0
            while True:
                messages, last = log.read(after, max_bytes=1 << 20)
                if not messages:
                    return seen
                seen += len(messages)
                after = last

        assert read_everything() == count
        read_seconds = timed(read_everything, repeat=3)
        print(
            f"sequential read (1 MiB pages):             {count / read_seconds:>10,.0f} msg/s  "
            f"{log.size_bytes / read_seconds / 1e6:,.0f} MB/s"
        )
        near_tail = LogOffset.snapshot_chunk(count - 10)
        tail_seconds = timed(lambda: log.read(near_tail), repeat=2000)
        print(f"read of the last 9 messages (sparse index): {tail_seconds * 1e6:>10,.1f} µs")
        middle = LogOffset.snapshot_chunk(count // 2)
        contains_seconds = timed(lambda: log.contains(middle), repeat=2000)
        print(f"contains(offset in the middle):             {contains_seconds * 1e6:>10,.1f} µs")

        # Live changes synced by this process are indexed exactly: the long-poll path.
        live = [(LogOffset.live(10**9 + i, 0), message(LogOffset.live(10**9 + i, 0))) for i in range(500)]
        log.append(live)
        log.sync()
        live_tail = live[-10][0]
        live_seconds = timed(lambda: log.read(live_tail), repeat=5000)
        print(f"read of the last 9 live messages (tail):    {live_seconds * 1e6:>10,.1f} µs")
        live_contains = timed(lambda: log.contains(live[-100][0]), repeat=5000)
        print(f"contains(recent live offset):               {live_contains * 1e6:>10,.1f} µs")
        log.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
