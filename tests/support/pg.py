"""A throwaway real Postgres cluster on loopback for integration tests.

Postgres refuses to run as root, so the cluster belongs to an unprivileged OS user made for tests. The server
is started and stopped by PID by the test that owns it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.config import PostgresSettings, pg_bin_dir
from tests.support.ports import free_port

# The Postgres the tenants run (roles/postgres/defaults), so the tests use the same server binaries.
PG_BIN = pg_bin_dir(PostgresSettings.defaults()["version"])
TEST_USER = "appliance-test"


def ensure_test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], check=True
        )
        return pwd.getpwnam(TEST_USER)


def _as_user(user: pwd.struct_passwd) -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass
class PgCluster:
    data_dir: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]
    user: str = "postgres"
    dbname: str = "postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.dbname}"

    def conninfo(self, **extra: object) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": self.user, "password": self.password,
                 "dbname": self.dbname, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=60)


@contextmanager
def pg_cluster(settings: dict[str, str] | None = None) -> Iterator[PgCluster]:
    """A running cluster with wal_level=logical; yields once it accepts connections."""
    user = ensure_test_user()
    base = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
    os.chown(base, user.pw_uid, user.pw_gid)
    data = base / "data"
    pwfile = base / "pw"
    password = "test-" + os.urandom(8).hex()
    pwfile.write_text(password)
    os.chown(pwfile, user.pw_uid, user.pw_gid)
    subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
         f"--pwfile={pwfile}", "--no-sync"],
        check=True, capture_output=True, **_as_user(user),  # type: ignore[call-overload]
    )
    port = free_port()
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(port),
        "unix_socket_directories": f"'{base}'",
        "wal_level": "logical",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "fsync": "on",
        **(settings or {}),
    }
    with (data / "postgresql.conf").open("a") as fh:
        for key, value in conf.items():
            fh.write(f"{key} = {value}\n")
    with (data / "pg_hba.conf").open("a") as fh:
        fh.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    log = open(base / "postgres.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(data)], stdout=log, stderr=subprocess.STDOUT,
        **_as_user(user),  # type: ignore[call-overload]
    )
    cluster = PgCluster(data_dir=data, port=port, password=password, process=proc)
    try:
        _wait_ready(cluster, base)
        yield cluster
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def restart(cluster: PgCluster) -> None:
    """Start the cluster again on the same data dir and port (after kill or stop)."""
    if cluster.process.poll() is None:
        cluster.process.send_signal(signal.SIGINT)
        cluster.process.wait(timeout=30)
    user = ensure_test_user()
    base = cluster.data_dir.parent
    log = open(base / "postgres.log", "ab")  # noqa: SIM115 - owned by the process
    cluster.process = subprocess.Popen(
        [str(PG_BIN / "postgres"), "-D", str(cluster.data_dir)], stdout=log, stderr=subprocess.STDOUT,
        **_as_user(user),  # type: ignore[call-overload]
    )
    _wait_ready(cluster, base)


def _wait_ready(cluster: PgCluster, base: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            raise RuntimeError(f"postgres exited: {(base / 'postgres.log').read_text()[-2000:]}")
        ready = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port)], capture_output=True
        )
        if ready.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("postgres did not become ready")
