"""Benchmarks, each run as `python -m tests.bench.<name>`.

A benchmark starts servers (throwaway clusters, streams, gateways) and stops them in `finally` blocks; SIGTERM
(a `kill` or a CI timeout) would otherwise end the process without running them and leave the servers behind.
Turning it into SystemExit here, where every benchmark's package is imported, makes those blocks run.
"""

import signal
import sys


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
