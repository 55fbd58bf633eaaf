"""supervisord for tests whose services run under the host's service manager, without a deploy.

On a host deployed before, supervisord is already running and is left as it is. On a fresh machine (issue 15:
`.ci/run` with nothing deployed) these tests used to skip; now they start supervisord with Debian's config,
as the deploy would, and stop it again by its PID when they are done.

A host whose default was deployed but whose supervisord is not running (a restored machine image) is the
slow case: the supervisord started here brings the deployed tenants up too, and stopping it stops them all,
which took 90 s once. The stop is awaited for as long as supervisord may take (SUPERVISORD_STOP_WAIT_S), so
the next test (a deploy) never meets a supervisord that still holds its socket while shutting down.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.supervision import SUPERVISOR_CONF, SUPERVISORD_SHUTTING_DOWN, SUPERVISORD_STOP_WAIT_S, Supervisor


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running (a daemonized supervisord is not our child: once it exits it may linger as a zombie)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - read at once
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _shutting_down() -> bool:
    """supervisord still holds its socket but answers SHUTDOWN_STATE: it is stopping its programs."""
    answer = subprocess.run(["supervisorctl", "pid"], capture_output=True, text=True, timeout=30)
    return SUPERVISORD_SHUTTING_DOWN in answer.stdout + answer.stderr


@contextmanager
def supervisord_running() -> Iterator[Supervisor]:
    """The host's supervisord: the running one, or one started here and stopped on exit."""
    if os.geteuid() != 0:
        raise PermissionError("these tests create OS users and supervised services: run them as root")
    manager = Supervisor()
    if manager.is_running():
        yield manager
        return
    if _shutting_down():
        _wait(lambda: not _shutting_down(), SUPERVISORD_STOP_WAIT_S, "a supervisord shutting down did not finish")
    if shutil.which("supervisord") is None or not SUPERVISOR_CONF.is_file():
        raise FileNotFoundError(f"supervisord or {SUPERVISOR_CONF} is missing: apt-get install supervisor "
                                "(.ci/run does)")
    subprocess.run(["supervisord", "-c", str(SUPERVISOR_CONF)], check=True, capture_output=True, timeout=30)
    _wait(manager.is_running, 30, "supervisord did not come up")
    pid = int(manager._rpc().supervisor.getPID())  # type: ignore[arg-type]
    try:
        yield manager
    finally:
        os.kill(pid, signal.SIGTERM)  # supervisord stops its programs, then itself
        _wait(lambda: not _alive(pid), SUPERVISORD_STOP_WAIT_S, f"supervisord (pid {pid}) did not stop")
