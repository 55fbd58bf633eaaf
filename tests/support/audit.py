"""A tenant with a real Postgres cluster and a real TLS SeaweedFS store with Object Lock, for audit tests.

The store is shared (module-scoped: starting weed costs seconds); each rig is a fresh tenant on it — its own
S3 identity and locked bucket — with a throwaway cluster of its own, migrated like the deploy does. The
rig's host.json lives in the store's config dir, so `appliance audit ...` subprocesses find the tenant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from appliance.audit.batch import build_batch, parse_key, prefix
from appliance.audit.chain import AuditEvent, append_events
from appliance.audit.db import connect_audit, fetch_range, watermark
from appliance.audit.shipper import Shipper, ShipperSettings
from appliance.audit.store import audit_client, list_versions
from appliance.audit.verify import VerifyReport, verify_tenant
from appliance.config import TENANT_SECRETS, HostConfig, TenantConfig, host_config
from appliance.host.postgres import ensure_roles
from appliance.objectstore.buckets import ensure_tenant_buckets
from appliance.objectstore.client import S3Client
from appliance.pg import connect
from appliance.secrets import generate, write_private
from appliance.tenantdb.migrate import migrate
from tests.support.objectstore import ObjectStore
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.pg import PgCluster, pg_cluster


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class AuditRig:
    store: ObjectStore
    pg: PgCluster
    host: HostConfig
    tenant: TenantConfig

    # -- clients ------------------------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        return self.tenant.audit_bucket

    def s3(self, **kwargs: Any) -> S3Client:
        """The tenant's own keys: what the shipper (and an attacker holding them) can do."""
        return audit_client(self.host, self.tenant, **kwargs)

    def admin_s3(self) -> S3Client:
        return self.store.client()

    def superuser(self) -> psycopg.Connection[Any]:
        return connect(self.tenant, "postgres")

    def audit_conn(self) -> psycopg.Connection[Any]:
        return connect_audit(self.tenant)

    def gateway_conn(self) -> psycopg.Connection[Any]:
        return connect(self.tenant, "gateway")

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.superuser() as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    # -- events ---------------------------------------------------------------------------------------------
    def append(self, count: int, *, chunk: int = 1000, conn: psycopg.Connection[Any] | None = None,
               action: str = "thing.create") -> int:
        """Append `count` events as the gateway role would; returns the last seq."""
        last = 0
        with contextlib.ExitStack() as stack:
            own = conn or stack.enter_context(self.gateway_conn())
            done = 0
            while done < count:
                size = min(chunk, count - done)
                events = [AuditEvent("user:" + str(uuid.UUID(int=done + i)), action, uuid.UUID(int=7),
                                     f"thing:{done + i}", {"n": done + i, "name": f"événement {done + i}"})
                          for i in range(size)]
                last = append_events(own, events)[-1][0]
                done += size
        return last

    def head(self) -> int:
        with self.audit_conn() as conn:
            return watermark(conn).head_seq

    def shipped(self) -> int:
        with self.audit_conn() as conn:
            return watermark(conn).shipped_seq

    # -- shipping -------------------------------------------------------------------------------------------
    def shipper(self, **settings: Any) -> Shipper:
        base = ShipperSettings.of(self.tenant)
        merged = ShipperSettings(**{**base.__dict__, **settings})
        return Shipper(self.tenant, self.s3(), self.audit_conn, settings=merged)

    def ship_all(self, **settings: Any) -> int:
        shipper = self.shipper(**settings)
        try:
            return shipper.drain()
        finally:
            shipper.close()

    def env(self) -> dict[str, str]:
        return {**os.environ, "APPLIANCE_CONFIG_DIR": str(self.host.common.config_dir)}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(APPLIANCE_BIN), *args], capture_output=True, text=True, env=self.env(),
                              cwd=REPO, timeout=timeout)

    def start_shipper(self, *extra: str, log_name: str = "shipper.log") -> subprocess.Popen[bytes]:
        """`appliance audit ship --tenant <id>` as its own process, as the service runs it."""
        log = open(self.store.base / log_name, "ab")  # noqa: SIM115 - owned by the process
        return subprocess.Popen([str(APPLIANCE_BIN), "audit", "ship", "--tenant", self.tenant.id, *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=REPO)

    def shipper_log(self, log_name: str = "shipper.log") -> str:
        path = self.store.base / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def verify(self, source: str = "both") -> VerifyReport:
        with self.audit_conn() as conn:
            return verify_tenant(self.tenant.id, self.bucket, s3=self.s3(), conn=conn, source=source)  # type: ignore[arg-type]

    def wait_shipped(self, seq: int, timeout_s: float = 60.0) -> None:
        wait_for(lambda: self.shipped() >= seq, timeout_s, f"events through seq {seq} to be shipped")

    # -- what the store holds --------------------------------------------------------------------------------
    def assert_exactly_once(self) -> int:
        """Every shipped seq is in exactly one object with exactly one version, byte for byte what its rows
        give, keys contiguous from seq 1 to the watermark, and Postgres's batch records agree. Returns the
        number of batches."""
        s3 = self.s3()
        keys = list(list_versions(s3, self.bucket, prefix(self.tenant.id)))
        with self.audit_conn() as conn:
            mark = watermark(conn)
            records = {r[0]: r for r in conn.execute(
                "SELECT object_key, version_id, shipped_at, first_seq, last_seq FROM audit.batches")}
            expected = 1
            infos = []
            for versions in keys:
                info = parse_key(versions.key)
                assert info is not None, versions.key
                assert len(versions.versions) == 1 and not versions.markers, (versions.key, versions.entries)
                infos.append((info, versions))
            infos.sort(key=lambda item: item[0].first_seq)
            for info, versions in infos:
                assert info.first_seq == expected, f"gap or overlap at {versions.key} (expected {expected})"
                rows = fetch_range(conn, info.first_seq, info.last_seq)
                batch = build_batch(self.tenant.id, rows)
                assert batch.key == versions.key
                body = s3.get_object(Bucket=self.bucket, Key=versions.key)["Body"].read()
                assert body == batch.body, f"{versions.key} differs from what its rows give"
                record = records.get(versions.key)
                assert record is not None and record[2] is not None, f"{versions.key} not recorded as shipped"
                assert record[1] == versions.versions[0].version_id
                expected = info.last_seq + 1
            assert expected - 1 == mark.shipped_seq, (expected - 1, mark.shipped_seq)
            unshipped = [r for r in records.values() if r[2] is None]
            assert all(r[3] == mark.shipped_seq + 1 for r in unshipped)
        return len(infos)


def _tenant_host(store: ObjectStore, tenant_id: str, pg: PgCluster, audit: dict[str, Any]) -> HostConfig:
    common, objectstore = store.host.common, store.host.objectstore
    return host_config("audit-test", {
        "common": {"state_root": str(common.state_root), "tenants_root": str(common.tenants_root),
                   "config_dir": str(common.config_dir), "install_root": str(common.install_root),
                   "port_firewall": False},
        "objectstore": {"s3_port": objectstore.s3_port, "master_port": objectstore.master_port,
                        "volume_port": objectstore.volume_port, "filer_port": objectstore.filer_port},
        "tenants": {tenant_id: {"slot": 0, "ports": {"postgres": pg.port},
                                "audit": {"retention_days": 1, **audit}}},
    })


def _keys_work(rig_s3: Callable[[], S3Client], bucket: str) -> bool:
    try:
        rig_s3().list_objects_v2(Bucket=bucket, MaxKeys=1)
    except (ClientError, BotoCoreError):
        return False
    return True


@contextlib.contextmanager
def audit_rig(store: ObjectStore, *, audit: dict[str, Any] | None = None,
              tenant_id: str | None = None) -> Iterator[AuditRig]:
    """A fresh tenant (own cluster, own identity and locked bucket on `store`), migrated and ready."""
    tenant_id = tenant_id or "t" + os.urandom(4).hex()
    with pg_cluster() as pg:
        host = _tenant_host(store, tenant_id, pg, audit or {})
        tenant = host.tenant(tenant_id)
        tenant.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        store.add_tenant_identity(tenant)  # writes its S3 keys into the secrets dir and reloads weed
        for name, kind in TENANT_SECRETS.items():
            if not tenant.secret_path(name).exists():
                value = pg.password if name == "db_superuser_password" else generate(kind)
                write_private(tenant.secret_path(name), value, os.getuid(), os.getgid())
        tenant.pg_socket_dir.parent.mkdir(parents=True, exist_ok=True)
        tenant.pg_socket_dir.symlink_to(pg.data_dir.parent)
        ensure_roles(tenant)
        with connect(tenant, "postgres") as conn:
            migrate(conn)
        ensure_tenant_buckets(store.client(), tenant)
        rig = AuditRig(store, pg, host, tenant)
        wait_for(lambda: _keys_work(rig.s3, tenant.audit_bucket), 10, "the tenant's S3 keys to work")
        (host.common.config_dir / "host.json").write_text(host.model_dump_json(indent=2))
        yield rig


def kill9(process: subprocess.Popen[bytes]) -> None:
    """kill -9 by PID (never by name) and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill9(process)
    return process.returncode
