"""The fake-host harness starts over after a run that was killed before its teardown (CI reuses machines)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import hosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def test_what_a_killed_run_left_is_removed_by_the_next_one(tmp_path: Path) -> None:
    with hosts._lock():  # as a run holds it; nobody else may be making fake hosts meanwhile
        hosts._reclaim_leftovers()
        # What a run killed mid-way leaves: a namespace with a process in it, the bridge, the NAT table,
        # ip_forward changed (with its previous value recorded) and its harness directory.
        namespace = "apfh-killed"
        assert _ip("netns", "add", namespace).returncode == 0
        sleeper = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "600"])
        assert _ip("link", "add", hosts.BRIDGE, "type", "bridge").returncode == 0
        subprocess.run(["nft", "add", "table", "ip", hosts.NAT_TABLE], check=True)
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        before = forward.read_text().strip()
        hosts.FORWARD_STATE.write_text(before + "\n")
        harness_dir = hosts.HARNESS_PARENT / "appliance-fake-hosts-killedrun"
        harness_dir.mkdir(exist_ok=True)
        try:
            deadline = time.monotonic() + 10
            while not _ip("netns", "pids", namespace).stdout.split() and time.monotonic() < deadline:
                time.sleep(0.05)
            hosts._reclaim_leftovers()
            assert sleeper.wait(timeout=10) != 0  # killed, by the PID its namespace listed
            assert namespace not in _ip("netns", "list").stdout
            assert _ip("link", "show", hosts.BRIDGE).returncode != 0
            assert subprocess.run(["nft", "list", "table", "ip", hosts.NAT_TABLE], capture_output=True).returncode
            assert not hosts.FORWARD_STATE.exists()
            assert forward.read_text().strip() == before
            assert not harness_dir.exists()
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
            _ip("netns", "del", namespace)
            _ip("link", "del", hosts.BRIDGE)
            subprocess.run(["nft", "delete", "table", "ip", hosts.NAT_TABLE], capture_output=True)
            hosts.FORWARD_STATE.unlink(missing_ok=True)
