"""A tenant's stack on loopback, for the gateway's, agents', identity and schema tests and the benchmarks: a
provisioned tenant on a throwaway cluster, the streams server, the embedded sync engine, the gateway (in-process
uvicorn or a separate process), and small recording HTTP servers standing in for services built elsewhere (agent
workers, the sync engine) - each started and stopped by PID by its test."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from appliance.config import TENANT_SECRETS, HostConfig, TenantConfig, host_config
from appliance.gateway.core.security import Keyring
from appliance.gateway.main import create_app
from appliance.host.postgres import ensure_roles
from appliance.pg import connect
from appliance.secrets import generate, write_private
from appliance.tenantdb.migrate import ensure_publication, migrate
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.pg import PgCluster
from tests.support.ports import free_port
from tests.support.streams import streams_server_dir


def wait_http(url: str, timeout: float = 30, process: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# -- the tenant ---------------------------------------------------------------------------------------------


@dataclass
class TenantEnv:
    """A tenant whose config lives in `config_dir/host.json` and whose database is provisioned."""

    tenant: TenantConfig
    host: HostConfig
    base: Path
    pg: PgCluster | None = None

    @property
    def config_dir(self) -> Path:
        return self.host.common.config_dir

    def keyring(self) -> Keyring:
        return Keyring.for_tenant(self.tenant)

    def token(self, subject: uuid.UUID | str, ttl: int = 600) -> str:
        return self.keyring().issue(subject, ttl)

    def superuser(self) -> psycopg.Connection[Any]:
        return connect(self.tenant, "postgres")

    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.tenant.port('gateway')}"


def make_tenant(base: Path, tenant_id: str = "acme", slot: int = 1, pg: PgCluster | None = None,
                gateway: dict[str, Any] | None = None, ports: dict[str, int] | None = None,
                identity: dict[str, Any] | None = None) -> TenantEnv:
    """Config + secrets for a tenant under `base` (no services). With `pg`, the tenant's Postgres is it."""
    all_ports = {name: free_port() for name in ("streams", "sync", "gateway", "agents", "identity")}
    all_ports["postgres"] = pg.port if pg else free_port()
    all_ports.update(ports or {})
    data = {
        "common": {"tenants_root": str(base / "tenants"), "config_dir": str(base / "etc"),
                   "state_root": str(base / "state"), "port_firewall": False},
        "tenants": {tenant_id: {"slot": slot, "ports": all_ports,
                                "gateway": {"rate_limit_per_minute": 1_000_000, **(gateway or {})},
                                **({"identity": identity} if identity else {})}},
    }
    host = host_config("testhost", data)
    tenant = host.tenant(tenant_id)
    tenant.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, kind in TENANT_SECRETS.items():
        value = pg.password if (pg and name == "db_superuser_password") else generate(kind)
        if not tenant.secret_path(name).exists():
            write_private(tenant.secret_path(name), value, os.getuid(), os.getgid())
    host.common.config_dir.mkdir(parents=True, exist_ok=True)
    (host.common.config_dir / "host.json").write_text(host.model_dump_json(indent=2))
    if pg is not None:
        # The superuser connects over the tenant's socket dir: point it at the test cluster's socket.
        tenant.pg_socket_dir.parent.mkdir(parents=True, exist_ok=True)
        if not tenant.pg_socket_dir.exists():
            tenant.pg_socket_dir.symlink_to(pg.data_dir.parent)
    return TenantEnv(tenant, host, base, pg)


def provision(env: TenantEnv) -> list[str]:
    """What the deploy does for the gateway: roles and database, migrations, publication."""
    ensure_roles(env.tenant)
    with env.superuser() as conn:
        applied = migrate(conn)
        ensure_publication(conn, env.tenant.sync.publication)
    return applied


# -- the streams server --------------------------------------------------------------------------------------


@dataclass
class StreamsServer:
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    long_poll_ms: int = 2000

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.data_dir.parent / f"streams-{self.port}.log", "ab")  # noqa: SIM115 - owned by the process
        server_dir = streams_server_dir()
        self.process = subprocess.Popen(
            ["node", str(server_dir / "server.mjs"), "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--long-poll-timeout", str(self.long_poll_ms)],
            stdout=log, stderr=subprocess.STDOUT, cwd=server_dir,
        )
        wait_http(self.url + "/", process=self.process)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)


@contextlib.contextmanager
def streams_server(port: int, data_dir: Path, long_poll_ms: int = 2000) -> Iterator[StreamsServer]:
    server = StreamsServer(port, data_dir, long_poll_ms=long_poll_ms)
    data_dir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the gateway ---------------------------------------------------------------------------------------------


class InProcessGateway:
    """The real app under real uvicorn, in a thread of the test process (so tests can look inside)."""

    def __init__(self, env: TenantEnv) -> None:
        self.env = env
        self.app = create_app(env.tenant)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=env.tenant.port("gateway"), log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return self.env.gateway_url()

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def gateway_in_process(env: TenantEnv) -> Iterator[InProcessGateway]:
    gateway = InProcessGateway(env)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def start_gateway_process(env: TenantEnv, log_name: str = "gateway.log") -> subprocess.Popen[bytes]:
    """`appliance gateway serve` as its own process, reading host.json from the env's config dir."""
    log = open(env.base / log_name, "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [str(APPLIANCE_BIN), "gateway", "serve", "--tenant", env.tenant.id, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        env={**os.environ, "APPLIANCE_CONFIG_DIR": str(env.config_dir)},
    )
    wait_http(env.gateway_url() + "/healthz", process=process)
    return process


# -- recording upstreams -------------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


Handler = Callable[["RecordingServer", Recorded, BaseHTTPRequestHandler], None]


@dataclass
class RecordingServer:
    """A loopback HTTP/1.1 server that records every request and answers with `handler`."""

    handler: Handler
    port: int = field(default_factory=free_port)
    requests: list[Recorded] = field(default_factory=list)
    events: dict[str, threading.Event] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def start(self) -> None:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                from urllib.parse import parse_qsl, urlsplit

                split = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                record = Recorded(self.command, split.path, parse_qsl(split.query, keep_blank_values=True),
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                owner.requests.append(record)
                # One request per connection: a stopped server must not keep answering on kept-alive sockets.
                self.close_connection = True
                owner.handler(owner, record, self)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        for event in self.events.values():
            event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.send_header("connection", "close")
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def recording_server(handler: Handler, port: int | None = None) -> Iterator[RecordingServer]:
    server = RecordingServer(handler, port=port or free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def temp_base(prefix: str = "appliance-gw-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    return path


def remove_base(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -- the embedded sync engine --------------------------------------------------------------------------------


@contextlib.contextmanager
def sync_server(env: TenantEnv, long_poll_ms: int = 2000) -> Iterator[subprocess.Popen[bytes]]:
    """`appliance sync serve` for the tenant, as its service would run it (sync role, secrets from files)."""
    tenant = env.tenant
    log = open(env.base / "sync.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(
        [str(APPLIANCE_BIN), "sync", "serve",
         "--database-url", f"postgresql://sync@127.0.0.1:{tenant.port('postgres')}/{tenant.postgres.database}",
         "--database-password-file", str(tenant.secret_path("db_sync_password")),
         "--secret-file", str(tenant.secret_path("sync_secret")),
         "--port", str(tenant.port("sync")), "--data-dir", str(env.base / "sync"),
         "--long-poll-timeout", str(long_poll_ms),
         "--publication", tenant.sync.publication, "--slot", tenant.sync.slot, "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"sync server exited: {(env.base / 'sync.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{tenant.port('sync')}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sync server did not become healthy")
            time.sleep(0.05)
        yield process
    finally:
        stop_process(process)
