"""Harness for the sync engine's and protocol tests: the engine as a real `appliance sync serve` process, and the
official Node clients (scripts and node_modules in tests/protocol) as processes that report what they see as JSON
lines."""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from appliance.sync.defaults import LONG_POLL_TIMEOUT_MS
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.ports import free_port

# The official Electric clients' node_modules and the Node scripts that drive them.
PROTOCOL_DIR = REPO / "tests" / "protocol"

Event = dict[str, Any]


def require_node_modules() -> None:
    if not (PROTOCOL_DIR / "node_modules" / "@electric-sql" / "client").is_dir():
        raise RuntimeError("run `npm install --no-save --prefix tests/protocol` first (see .ci/run)")


class SyncServer:
    """`appliance sync serve` on a free loopback port; stopped (or killed) by its PID.

    Everything it uses lives under one temporary root (state, log, and the secret and database URL, passed as
    files as the deployed service does, so neither shows in the process listing); `remove()` deletes it."""

    def __init__(self, dsn: str, *, long_poll_ms: int = LONG_POLL_TIMEOUT_MS, allow_delete: bool = False,
                 chunk_bytes: int | None = None) -> None:
        self.dsn = dsn
        self.root = Path(tempfile.mkdtemp(prefix="appliance-sync-"))
        self.data_dir = self.root / "data"
        self.secret = secrets.token_hex(8)
        self.port = free_port()
        self.long_poll_ms = long_poll_ms
        self.allow_delete = allow_delete
        self.chunk_bytes = chunk_bytes
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "sync.log"
        self.secret_file = self._private_file("secret", self.secret)
        self.dsn_file = self._private_file("database-url", dsn)

    def _private_file(self, name: str, content: str) -> Path:
        path = self.root / name
        path.touch(mode=0o600)
        path.write_text(content)
        return path

    def remove(self) -> None:
        """Stop the server and delete its root (state, log, secret files)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/shape"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SyncServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                str(APPLIANCE_BIN),
                "sync",
                "serve",
                "--database-url-file",
                str(self.dsn_file),
                "--port",
                str(self.port),
                "--secret-file",
                str(self.secret_file),
                "--data-dir",
                str(self.data_dir),
                "--long-poll-timeout",
                str(self.long_poll_ms),
                *(["--enable-shape-delete"] if self.allow_delete else []),
                *(["--chunk-bytes", str(self.chunk_bytes)] if self.chunk_bytes else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sync server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sync server not healthy: {self.log_tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base}/v1/health", timeout=2).json() == {"status": "active"}
        except httpx.HTTPError:
            return False

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def kill(self) -> None:
        """kill -9 by PID: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def get(self, **params: Any) -> httpx.Response:
        params.setdefault("secret", self.secret)
        return httpx.get(self.url, params=params, timeout=60)


class NodeProcess:
    """A Node script printing one JSON event per line; read with `next()` / `until()`."""

    def __init__(self, script: str, options: dict[str, Any]) -> None:
        require_node_modules()
        self.process = subprocess.Popen(
            ["node", str(PROTOCOL_DIR / script), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=PROTOCOL_DIR,
        )
        self.events: queue.Queue[Event] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.stderr.append(line.decode(errors="replace"))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line.decode(errors="replace"))

    def next(self, timeout: float = 20) -> Event:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s; stderr: {''.join(self.stderr)[-3000:]}") from None

    def until(self, check: Callable[[Event], bool], timeout: float = 20, what: str = "event") -> Event:
        deadline = time.monotonic() + timeout
        seen: list[Event] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what} not seen within {timeout}s; saw {json.dumps(seen)[-3000:]}")
            event = self.next(remaining)
            seen.append(event)
            if check(event):
                return event

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


def shape_client(server: SyncServer, table: str, **options: Any) -> NodeProcess:
    return NodeProcess("shape_client.mjs", {"url": server.url, "table": table, "secret": server.secret, **options})


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def write_returning_txid(dsn: str, *statements: str) -> int:
    """Run statements in one transaction and return its txid the way the gateway does."""
    with psycopg.connect(dsn) as conn:
        for statement in statements:
            conn.execute(statement)
        row = conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
        conn.commit()
    assert row is not None
    return int(row[0])
