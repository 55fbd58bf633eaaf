"""A real tenant for backup tests: its own OS user, cluster, streams server and stanza, on a real store.

The tenant is set up the way the deploy sets one up (same functions, same templates, same service specs): OS
user `tenant-<id>`, secrets, initdb, postgresql.conf rendered with `archive_command(tenant)`, the tenant's
services as supervisord programs, roles, then `ensure_stanza`. Everything lives in a temporary dir beside the
test object store; `host.json` is written there too, so the `appliance` CLI reaches this tenant with
APPLIANCE_CONFIG_DIR=<rig.config_dir>. Tenant ids start with `bkt` so that they can never be a real tenant's.

Teardown stops the supervisord programs it added (by name, its own), kills leftovers of its own OS user by
PID, removes the user and the files.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from appliance.backup import generations, pgbackrest
from appliance.backup.archive import archive_command
from appliance.backup.paths import backup_paths
from appliance.backup.stanza import STANZA_OK, ensure_stanza, status_of
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig, host_config
from appliance.desired import postgres_files
from appliance.host.postgres import ensure_roles, initdb, probe
from appliance.host.processes import kill_user_processes
from appliance.objectstore.credentials import tenant_credentials
from appliance.pg import connect
from appliance.secrets import ensure_tenant_secrets
from appliance.services import tenant_services
from appliance.servicespec import ServiceSpec
from appliance.supervision import Supervisor
from tests.support.objectstore import ObjectStore, object_store
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.ports import bindable
from tests.support.streams import streams_server_dir
from tests.support.supervisord import supervisord_running

# The streams server the bootstrap deploy installed (node_modules included); the rig's install root links to it
# and to this venv, so that the tenant's services run this checkout's code.

# The rig's own tables live in schema `rig` (first on the superuser's search_path in the tenant's database), so
# that the product's migrations (public.houses, audit.events, ...) can be applied beside them.
SCHEMA = """
create schema if not exists rig;
create table if not exists rig.houses (id uuid primary key, name text not null, deleted_at timestamptz);
create table if not exists rig.threads (
    id uuid primary key, house_id uuid not null references rig.houses(id), title text not null,
    created_at timestamptz not null default clock_timestamp(), deleted_at timestamptz);
create table if not exists rig.notes (
    id bigserial primary key, house_id uuid not null, body text not null,
    created_at timestamptz not null default clock_timestamp());
"""


def free_port_block(size: int) -> int:
    """A base port with `size` free ports above it (tenant ports are base + slot * 10 + offset)."""
    for _ in range(200):
        base = 30000 + (uuid.uuid4().int % 2500) * 10
        if all(bindable(base + i) for i in range(size)):
            return base
    raise RuntimeError("no free port block")


@dataclass
class Rig:
    store: ObjectStore
    host: HostConfig

    @property
    def config_dir(self) -> Path:
        return self.host.common.config_dir

    def tenant(self, tenant_id: str) -> TenantConfig:
        return self.host.tenant(tenant_id)

    def env(self) -> dict[str, str]:
        return {**os.environ, "APPLIANCE_CONFIG_DIR": str(self.config_dir)}

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`appliance <args>` against this rig's host.json."""
        return subprocess.run([str(APPLIANCE_BIN), *args], capture_output=True, text=True, env=self.env(),
                              timeout=timeout, cwd=REPO)

    def connect(self, tenant_id: str, database: str | None = None) -> psycopg.Connection:
        return connect(self.tenant(tenant_id), database=database)

    def services(self, tenant_id: str) -> list[ServiceSpec]:
        return rig_services(self.tenant(tenant_id))


def _make_user(tenant: TenantConfig) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(tenant.user)
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", str(tenant.root),
                    "--shell", "/usr/sbin/nologin", tenant.user], check=True, capture_output=True)
    return pwd.getpwnam(tenant.user)


def install_programs(specs: list[ServiceSpec]) -> None:
    mgr = Supervisor()
    for spec in specs:
        mgr.unit_path(spec).write_text(mgr.render(spec))
    subprocess.run(mgr.apply_command(specs), check=True, capture_output=True)


def remove_programs(specs: list[ServiceSpec]) -> None:
    mgr = Supervisor()
    for spec in specs:
        subprocess.run(mgr.stop_command(spec), capture_output=True)
        mgr.unit_path(spec).unlink(missing_ok=True)
    subprocess.run(["supervisorctl", "update"], capture_output=True)


def wait_postgres(tenant: TenantConfig, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        ok, detail = probe(tenant)
        if ok:
            return
        time.sleep(0.2)
    log = tenant.log_file("postgres")
    raise RuntimeError(f"postgres of {tenant.id} not up: {detail}\n{log.read_text()[-2000:] if log.exists() else ''}")


def rig_services(tenant: TenantConfig) -> list[ServiceSpec]:
    """The services the rig runs: Postgres and streams, the two whose data the backup holds. The appliance's
    Python services (sync, gateway, agents) are left out: they need the deploy's other steps (migrations,
    publication, ...), and this venv's interpreter may live where the tenant's user cannot run it
    (~root/.pyenv). A restore starts the services the service manager has, so it works the same."""
    return [spec for spec in tenant_services(tenant) if spec.component in ("postgres", "streams")]


def wait_healthy(host: HostConfig, tenant: TenantConfig, timeout: float = 60) -> None:
    """Every service of the tenant answers its health probe (what `appliance host wait` checks)."""
    from appliance.status import component_status

    specs = rig_services(tenant)
    mgr = Supervisor()
    deadline = time.monotonic() + timeout
    while True:
        states = mgr.states(specs)
        statuses = {spec.component: component_status(spec, states[spec.name], host) for spec in specs}
        unhealthy = {name: status.detail for name, status in statuses.items() if not status.healthy}
        if not unhealthy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tenant.id} not healthy: {unhealthy}")
        time.sleep(0.2)


def set_up_tenant(host: HostConfig, tenant: TenantConfig, *, product_schema: bool = False) -> None:
    """What the deploy does for a tenant, with the backup steps where the deploy will call them."""
    from appliance.backup.pgbackrest import ensure_files

    user = _make_user(tenant)
    owner = (user.pw_uid, user.pw_gid)
    for path in (tenant.root, tenant.secrets_dir, tenant.logs_dir, tenant.run_dir, tenant.pg_socket_dir,
                 tenant.pg_data.parent, tenant.streams_data, tenant.sync_data, tenant.agents_data, tenant.backup_dir):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(path, *owner)
        os.chmod(path, 0o700)
    # Each component's own user, its dir and its secrets' owners, as the deploy's users step makes them.
    from appliance.host.users import ensure_users

    ensure_users(tenant)
    ensure_tenant_secrets(tenant, *owner)
    initdb(tenant)
    ensure_files(host, tenant)
    files = postgres_files(tenant)
    if "archive_command" not in files["postgresql.conf"]:
        # What the deploy renders once it passes archive_command(tenant) to the template.
        files["postgresql.conf"] += (
            f"\narchive_mode = on\narchive_command = '{archive_command(tenant)}'\n"
            f"archive_timeout = {tenant.backup.archive_timeout_s}\n"
        )
    for name, content in files.items():
        path = tenant.pg_data / name
        path.write_text(content)
        os.chown(path, *owner)
        os.chmod(path, 0o600)
    specs = rig_services(tenant)
    install_programs(specs[:1])
    wait_postgres(tenant)
    ensure_roles(tenant)
    ensure_stanza(host, tenant)
    install_programs(specs[1:])
    wait_healthy(host, tenant)
    with connect(tenant) as conn:
        conn.execute(SCHEMA)
        conn.execute(f"alter role postgres in database {tenant.postgres.database} set search_path = rig, public")
        if product_schema:
            from appliance.tenantdb.migrate import migrate

            migrate(conn)


def tear_down_tenant(tenant: TenantConfig) -> None:
    remove_programs(rig_services(tenant))
    names = [*tenant.own_users.values(), tenant.user]
    for name in names:
        with contextlib.suppress(KeyError):
            kill_user_processes(pwd.getpwnam(name).pw_uid)
    for name in names:
        subprocess.run(["userdel", name], capture_output=True)
    for name in names:  # userdel keeps a group another user is in (they are in each other's)
        subprocess.run(["groupdel", name], capture_output=True)


def rig_host(store: ObjectStore, tenants: dict[str, dict[str, Any]]) -> HostConfig:
    install_root = store.base / "opt"
    install_root.mkdir(mode=0o755, exist_ok=True)
    for name, target in (("venv", Path(sys.prefix)), ("streams", streams_server_dir())):
        link = install_root / name
        if not link.exists():
            link.symlink_to(target)
    common = store.host.common.model_dump(mode="json")
    common.update({
        "install_root": str(install_root), "service_manager": "supervisor", "port_firewall": False,
        "port_base": free_port_block(10 * (len(store.tenants) + 1)), "health_timeout_s": 60,
    })
    data = {
        "common": common,
        "objectstore": store.host.objectstore.model_dump(mode="json"),
        "tenants": {tid: {"slot": slot, **tenants.get(tid, {})} for slot, tid in
                    enumerate(t.id for t in store.tenants)},
    }
    return host_config("backup-test", data)


@contextmanager
def backup_rig(tenant_ids: tuple[str, ...], settings: dict[str, dict[str, Any]] | None = None, *,
               product_schema: bool = False) -> Iterator[Rig]:
    """A store with `tenant_ids`, each a fully set-up tenant with a stanza; torn down afterwards. With
    `product_schema`, the tenant schema's migrations (product tables, audit chain) are applied as the deploy does."""
    assert all(t.startswith("bkt") for t in tenant_ids)
    with supervisord_running(), object_store(list(tenant_ids)) as store:
        os.chmod(store.base, 0o711)
        (store.base / "tenants").mkdir(mode=0o711, exist_ok=True)
        os.chmod(store.base / "tenants", 0o711)
        host = rig_host(store, settings or {})
        host.host_file.parent.mkdir(parents=True, exist_ok=True)
        host.host_file.write_text(host.model_dump_json(indent=2) + "\n")
        rig = Rig(store, host)
        try:
            for tenant in host.tenants:
                set_up_tenant(host, tenant, product_schema=product_schema)
            yield rig
        finally:
            for tenant in host.tenants:
                tear_down_tenant(tenant)


# -- data helpers ------------------------------------------------------------------------------------------
def add_house(conn: psycopg.Connection, name: str = "house") -> uuid.UUID:
    house = uuid.uuid4()
    conn.execute("insert into houses (id, name) values (%s, %s)", (house, name))
    return house


def add_thread(rig: Rig, tenant_id: str, house: uuid.UUID, entries: int) -> uuid.UUID:
    """A thread row and its stream `thread-<id>` with `entries` JSON entries."""
    import httpx

    tenant = rig.tenant(tenant_id)
    thread = uuid.uuid4()
    with rig.connect(tenant_id) as conn:
        conn.execute("insert into threads (id, house_id, title) values (%s, %s, %s)", (thread, house, "t"))
    base = f"http://127.0.0.1:{tenant.port('streams')}/thread-{thread}"
    with httpx.Client(timeout=10) as client:
        client.put(base, content=b"[]", headers={"content-type": "application/json"}).raise_for_status()
        batch = [{"id": str(uuid.uuid4()), "n": n, "text": f"entry {n} of {thread}"} for n in range(entries)]
        for start in range(0, entries, 200):
            client.post(base, content=json.dumps(batch[start:start + 200]).encode(),
                        headers={"content-type": "application/json"}).raise_for_status()
    return thread


def stream_body(tenant: TenantConfig, thread: uuid.UUID, port: int | None = None) -> bytes:
    import httpx

    url = f"http://127.0.0.1:{port or tenant.port('streams')}/thread-{thread}?offset=-1"
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def passphrase_opens(tenant: TenantConfig, path: str, passphrase: str) -> bool:
    """Whether `passphrase` opens the repository at `path`: `pgbackrest info` of it as the tenant (its keys, its
    config otherwise; the passphrase in the environment, as the wrapper passes it) finds a usable stanza."""
    creds = tenant_credentials(tenant, BACKUP_S3_KEYS)
    env = {"PATH": "/usr/bin:/bin"}
    for g in generations.layout(tenant):  # the kept ones too: the config names them for `info`
        env |= {f"PGBACKREST_REPO{g.repo}_S3_KEY": creds.access_key,
                f"PGBACKREST_REPO{g.repo}_S3_KEY_SECRET": creds.secret_key,
                f"PGBACKREST_REPO{g.repo}_CIPHER_PASS": generations.read_passphrase(tenant, g)}
    env["PGBACKREST_REPO1_CIPHER_PASS"] = passphrase
    result = subprocess.run(
        [pgbackrest.PGBACKREST, f"--config={backup_paths(tenant).config}", f"--stanza={tenant.id}",
         f"--repo1-path={path}", "--repo=1", "info", "--output=json"],
        capture_output=True, text=True, errors="replace", env=env, cwd="/", timeout=300,
        **pgbackrest.as_tenant(tenant))
    if result.returncode != 0:
        return False
    # A passphrase that does not decrypt the repository's info files: exit 0, the stanza's status 99, its message
    # quoting what the wrong key made of the file (control characters included).
    try:
        return status_of(json.loads(result.stdout, strict=False)[0])[0] in STANZA_OK
    except (ValueError, IndexError):
        return False
