"""Scratch instances: a restored copy of a tenant on other ports and dirs, beside the live one.

A scratch instance lives in `<tenant root>/scratch/<name>/` (`postgres/`, `streams/`, `run/`, `logs/`,
`scratch.json`) and runs as the tenant's OS user: its Postgres on a free loopback port with its socket in its
own run dir and archiving off (it must never push WAL into the tenant's repository: a promoted scratch would
otherwise add a timeline to the live tenant's archive), and a streams server on the restored streams data.
Its processes are started detached and stopped by the PIDs recorded in scratch.json, after checking that each
PID still runs a command inside this scratch dir.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.backup.pgbackrest import as_tenant, tenant_ids
from appliance.backup.streams import NODE
from appliance.config import DB_SUPERUSER, TenantConfig
from appliance.services import streams_dir


def free_port(address: str) -> int:
    """A port free on `address`, where the scratch servers will listen (the tenant's bind address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class Scratch:
    tenant: TenantConfig
    name: str
    pg_port: int
    streams_port: int
    pids: dict[str, int] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return backup_paths(self.tenant).scratch_root / self.name

    @property
    def pg_data(self) -> Path:
        return self.root / "postgres"

    @property
    def streams_data(self) -> Path:
        return self.root / "streams"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def state_file(self) -> Path:
        return self.root / "scratch.json"

    # -- layout ------------------------------------------------------------------------------------------
    def create_dirs(self) -> None:
        owner = tenant_ids(self.tenant)
        scratch_root = backup_paths(self.tenant).scratch_root
        for path in (scratch_root, self.root, self.pg_data, self.streams_data, self.run_dir, self.logs, self.spool):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.geteuid() == 0:
                os.chown(path, *owner)
        self.save()

    def save(self) -> None:
        state = {"tenant": self.tenant.id, "name": self.name, "pg_port": self.pg_port,
                 "streams_port": self.streams_port, "pids": self.pids, "created_at": self.created_at,
                 "detail": self.detail}
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, tenant: TenantConfig, name: str) -> Scratch:
        path = backup_paths(tenant).scratch_root / name / "scratch.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            raise BackupError(f"no scratch instance {name!r} of tenant {tenant.id} ({path} unreadable)") from None
        return cls(tenant, state["name"], int(state["pg_port"]), int(state["streams_port"]),
                   {k: int(v) for k, v in state.get("pids", {}).items()}, state.get("created_at", ""),
                   state.get("detail", {}))

    @classmethod
    def existing(cls, tenant: TenantConfig) -> list[str]:
        root = backup_paths(tenant).scratch_root
        return sorted(p.parent.name for p in root.glob("*/scratch.json")) if root.is_dir() else []

    # -- processes ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC"},
                # Its own session: an operator's Ctrl-C on the restoring command does not reach it, and
                # `--to-scratch` leaves it running after the command ends.
                start_new_session=True, **as_tenant(self.tenant),
            )
        finally:
            log.close()
        self.pids[name] = proc.pid
        self.save()
        return proc

    @property
    def streams_url(self) -> str:
        return f"http://{self.tenant.common.bind_address}:{self.streams_port}"

    def start_postgres(self) -> None:
        binary = str(self.tenant.pg_bin("postgres"))
        # Command-line settings win over the restored postgresql.conf (which names the live port and socket).
        self._spawn("postgres", [
            binary, "-D", str(self.pg_data), "-c", f"port={self.pg_port}",
            "-c", f"listen_addresses={self.tenant.common.bind_address}",
            "-c", f"unix_socket_directories={self.run_dir}", "-c", "archive_mode=off",
            "-c", "logging_collector=off",
        ])

    def start_streams(self) -> None:
        server = streams_dir(self.tenant) / "server.mjs"
        self._spawn("streams", [
            NODE, str(server), "--host", self.tenant.common.bind_address,
            "--port", str(self.streams_port), "--data-dir", str(self.streams_data),
            "--long-poll-timeout", str(self.tenant.streams.long_poll_timeout_ms),
        ])

    def alive(self, name: str) -> bool:
        pid = self.pids.get(name)
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # A zombie (exited, not yet reaped) is not alive; a PID reused by another program is not ours.
        return str(self.root) in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def log_tail(self, name: str, chars: int = 1500) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def connect(self, database: str = "postgres", password: str | None = None) -> psycopg.Connection:
        secret = password if password is not None else self.tenant.read_secret("db_superuser_password")
        return psycopg.connect(host=str(self.run_dir), port=self.pg_port, user=DB_SUPERUSER, dbname=database,
                               password=secret, connect_timeout=3, autocommit=True)

    def wait_promoted(self, timeout_s: float) -> None:
        """Until recovery has finished and the cluster accepts writes; fail fast if Postgres exits."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if not self.alive("postgres"):
                raise BackupError(f"the restored Postgres of {self.tenant.id} stopped during recovery: "
                                  f"{_recovery_failure(self.log_tail('postgres'))}")
            try:
                with self.connect() as conn:
                    row = conn.execute("select pg_is_in_recovery()").fetchone()
                if row and not row[0]:
                    return
                last = "still in recovery"
            except psycopg.Error as exc:
                last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            time.sleep(0.2)
        raise BackupError(f"the restored Postgres of {self.tenant.id} did not finish recovery in {timeout_s:.0f}s "
                          f"({last}); log: {self.logs / 'postgres.log'}")

    def wait_streams(self, timeout_s: float = 30) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive("streams"):
                raise BackupError(f"the restored streams server stopped: {self.log_tail('streams', 500)}")
            try:
                httpx.head(f"{self.streams_url}/__appliance_health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise BackupError(f"the restored streams server did not answer within {timeout_s:.0f}s")

    def stop(self) -> None:
        """Stop by recorded PID: Postgres with a fast shutdown, then anything left with SIGKILL."""
        for name, sig in (("streams", signal.SIGTERM), ("postgres", signal.SIGINT)):
            if self.alive(name):
                os.kill(self.pids[name], sig)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(self.alive(n) for n in self.pids):
            time.sleep(0.1)
        for name in self.pids:
            if self.alive(name):
                os.kill(self.pids[name], signal.SIGKILL)
        # Postgres's children exit with the postmaster; give them a moment before the files go.
        time.sleep(0.2)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _recovery_failure(log: str) -> str:
    """The line that says why recovery stopped, from Postgres's log."""
    lines = [line for line in log.splitlines() if "FATAL" in line or "PANIC" in line or "ERROR" in line]
    return lines[-1].split(" ", 3)[-1] if lines else log.strip().splitlines()[-1] if log.strip() else "no log"


def new_scratch(tenant: TenantConfig, name: str | None = None) -> Scratch:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    bind = tenant.common.bind_address
    scratch = Scratch(tenant, name or f"restore-{stamp}", free_port(bind), free_port(bind))
    if scratch.root.exists():
        raise BackupError(f"scratch instance {scratch.name} of {tenant.id} already exists at {scratch.root}")
    scratch.create_dirs()
    return scratch
