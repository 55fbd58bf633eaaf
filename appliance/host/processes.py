"""Processes of an OS user: found by uid in /proc and stopped by PID (never by a name pattern)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def kill_user_processes(uid: int, grace_s: float = 1.0) -> None:
    """SIGTERM every process of `uid`, then SIGKILL whatever is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = pids_of(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(grace_s)
