"""In-place restores through the real service manager (supervisord): a tenant whose directory was deleted comes
back whole, and a point-in-time restore rewinds the live tenant and keeps it backed up."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import psycopg
import pytest

from appliance.backup import pgbackrest
from appliance.backup.paths import backup_paths
from appliance.config import TENANT_SECRETS
from tests.support.backup import Rig, add_house, add_thread, backup_rig, stream_body

pytestmark = pytest.mark.slow
T = "bktc"


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with backup_rig((T,)) as running:
        yield running


def state(rig: Rig) -> dict[str, tuple[int, str]]:
    with rig.connect(T) as conn:
        return {
            table: tuple(conn.execute(  # type: ignore[misc]
                f"select count(*), md5(coalesce(string_agg(t::text, ',' order by t::text), '')) from {table} t"
            ).fetchone())
            for table in ("houses", "threads", "notes")
        }


def supervisor_pid(name: str) -> str:
    return subprocess.run(["supervisorctl", "pid", name], capture_output=True, text=True).stdout.strip()


def test_restore_after_deleting_the_tenant_dir_brings_it_back_whole(rig: Rig) -> None:
    tenant = rig.tenant(T)
    with rig.connect(T) as conn:
        house = add_house(conn, "kept")
        conn.execute("insert into notes (house_id, body) select %s, 'n' || g from generate_series(1, 20000) g",
                     (house,))
    threads = [add_thread(rig, T, house, 150) for _ in range(3)]
    token = jwt.encode({"sub": "member-1", "tenant": T}, tenant.read_secret("jwt_signing_key"), algorithm="EdDSA")
    # An agent's SQLite state in WAL mode, its latest rows only in the -wal file while its writer stays open.
    agent_db = tenant.agents_data / "agent-1.sqlite3"
    writer = sqlite3.connect(agent_db, isolation_level=None)
    writer.execute("pragma journal_mode=wal")
    writer.execute("pragma wal_autocheckpoint=0")
    writer.execute("create table inbox (id integer primary key, body text)")
    writer.executemany("insert into inbox (body) values (?)", [(f"activation {n}",) for n in range(300)])
    for path in tenant.agents_data.iterdir():
        os.chown(path, *pgbackrest.tenant_ids(tenant))
    assert Path(f"{agent_db}-wal").stat().st_size > 0
    backup = rig.cli("backup", T, "--full")
    writer.close()
    assert backup.returncode == 0, backup.stderr
    # Written after the backup: must come back through WAL replay.
    with rig.connect(T) as conn:
        conn.execute("insert into notes (house_id, body) select %s, 'late' || g from generate_series(1, 500) g",
                     (house,))
    pgbackrest.run(tenant, "check")  # archived, as archive_timeout would within a minute
    before = state(rig)
    streams_before = {thread: stream_body(tenant, thread) for thread in threads}
    secrets_before = {name: hashlib.sha256(tenant.secret_path(name).read_bytes()).hexdigest()
                      for name in TENANT_SECRETS}

    # Disaster: the services stop (as they would, their files gone) and the whole directory is deleted.
    for spec in reversed(rig.services(T)):
        subprocess.run(["supervisorctl", "stop", spec.name], capture_output=True, check=True)
    shutil.rmtree(tenant.root)

    started = time.monotonic()
    result = rig.cli("restore", T, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert any("secrets restored" in step for step in report["steps"])
    assert any("streams data restored" in step for step in report["steps"])
    assert "services healthy" in report["steps"]

    assert state(rig) == before
    with sqlite3.connect(agent_db) as restored_agent:
        assert restored_agent.execute("select count(*) from inbox").fetchone() == (300,)
    assert {t: stream_body(tenant, t) for t in threads} == streams_before
    assert {name: hashlib.sha256(tenant.secret_path(name).read_bytes()).hexdigest()
            for name in TENANT_SECRETS} == secrets_before
    public = jwt.get_unverified_header(token) and tenant.read_secret("jwt_signing_key")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(public.encode(), password=None).public_key()  # type: ignore[union-attr]
    assert jwt.decode(token, key, algorithms=["EdDSA"])["sub"] == "member-1"  # old tokens still verify
    # Nobody but the tenant's own users: the root and secrets dir are passed through by its components' users
    # (0710, the tenant's group), the cluster is its owner's, the streams their user's and the backup's.
    for path in (tenant.root, tenant.secrets_dir, tenant.pg_data, tenant.streams_data):
        assert path.stat().st_mode & 0o007 == 0, f"{path} is readable by others"
    assert stat.S_IMODE(tenant.root.stat().st_mode) == stat.S_IMODE(tenant.secrets_dir.stat().st_mode) == 0o710
    assert stat.S_IMODE(tenant.pg_data.stat().st_mode) == 0o700
    for spec in rig.services(T):
        assert supervisor_pid(spec.name).isdigit()
    # The restored tenant archives again and can be backed up.
    assert rig.cli("backup", T).returncode == 0
    assert time.monotonic() - started < 300


def test_point_in_time_restore_in_place_rewinds_the_live_tenant(rig: Rig) -> None:
    tenant = rig.tenant(T)
    with rig.connect(T) as conn:
        conn.execute("create table if not exists pitr (name text primary key)")
        conn.execute("insert into pitr values ('before')")
        time.sleep(0.2)
        target = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(0.2)
        conn.execute("insert into pitr values ('after')")
    old_pid = supervisor_pid(f"appliance-{T}-postgres")

    refused = rig.cli("restore", T, "--time", target.isoformat())
    assert refused.returncode == 2 and "--yes" in refused.stderr
    result = rig.cli("restore", T, "--time", target.isoformat(), "--yes", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert supervisor_pid(f"appliance-{T}-postgres") != old_pid

    with rig.connect(T) as conn:
        assert [r[0] for r in conn.execute("select name from pitr order by 1")] == ["before"]
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
        timeline = conn.execute("select timeline_id from pg_control_checkpoint()").fetchone()
    assert timeline is not None and timeline[0] >= 2
    # Writes and archiving go on from the new timeline; a drill of the restored tenant passes.
    with rig.connect(T) as conn:
        conn.execute("insert into pitr values ('after the restore')")
    assert rig.cli("backup", T).returncode == 0
    drill = rig.cli("drill", T)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert not list(backup_paths(tenant).scratch_root.glob("*/scratch.json"))


def test_restore_without_secrets_and_without_recovery_keys_says_what_is_missing(rig: Rig) -> None:
    tenant = rig.tenant(T)
    keys = backup_paths(tenant).recovery_keys_file
    saved = keys.read_bytes()
    moved = tenant.secrets_dir.with_name("secrets.moved")
    for spec in reversed(rig.services(T)):
        subprocess.run(["supervisorctl", "stop", spec.name], capture_output=True, check=True)
    tenant.secrets_dir.rename(moved)
    keys.unlink()
    try:
        result = rig.cli("restore", T, "--yes")
        assert result.returncode == 1
        assert "no recovery keys file" in result.stderr and "--recovery-file" in result.stderr
    finally:
        keys.write_bytes(saved)
        keys.chmod(0o600)
        shutil.rmtree(tenant.secrets_dir, ignore_errors=True)
        moved.rename(tenant.secrets_dir)
        for spec in rig.services(T):
            subprocess.run(["supervisorctl", "start", spec.name], capture_output=True)
    with psycopg.connect(**tenant.pg_conninfo("postgres", via_socket=True),
                         password=tenant.read_secret("db_superuser_password")):
        pass
