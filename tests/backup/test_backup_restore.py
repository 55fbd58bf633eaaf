"""Backups and restores of a real tenant: pgBackRest 2.45 into its own bucket on the embedded store over TLS.

One tenant (`bkta`) serves the module, set up the way the deploy sets one up (tests/support/backup.py); the tests
drive the `appliance` CLI as an operator would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.backup import pgbackrest
from appliance.backup.paths import backup_paths
from appliance.config import BACKUP_S3_KEYS, TENANT_SECRETS
from tests.support.backup import Rig, add_house, add_thread, backup_rig, stream_body
from tests.support.paths import APPLIANCE_BIN

pytestmark = pytest.mark.slow
T = "bkta"


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with backup_rig((T,)) as running:
        yield running


def cli_json(rig: Rig, *args: str) -> dict[str, object]:
    result = rig.cli(*args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def switch_and_archive(rig: Rig) -> None:
    """Make everything committed so far recoverable (what archive_timeout does within a minute)."""
    pgbackrest.run(rig.tenant(T), "check")


def table_state(conn: object, table: str) -> tuple[int, str]:
    row = conn.execute(f"select count(*), md5(coalesce(string_agg(t::text, ',' order by t::text), '')) "  # type: ignore[attr-defined]
                       f"from {table} t").fetchone()
    return int(row[0]), str(row[1])


def test_backup_writes_a_full_backup_and_a_sealed_tagged_bundle(rig: Rig) -> None:
    tenant = rig.tenant(T)
    with rig.connect(T) as conn:
        house = add_house(conn, "first")
        conn.execute("insert into notes (house_id, body) select %s, 'note ' || g from generate_series(1, 5000) g",
                     (house,))
    add_thread(rig, T, house, 300)
    result = cli_json(rig, "backup", T, "--full")
    backup, bundle = result["backup"], result["bundle"]
    assert isinstance(backup, dict) and isinstance(bundle, dict)
    assert backup["type"] == "full" and re.fullmatch(r"\d{8}-\d{6}F", str(backup["label"]))
    assert bundle["backup_label"] == backup["label"] and bundle["streams"] == 1
    assert bundle["appliance_version"] and str(bundle["postgres_version"]).startswith("15.")

    s3 = rig.store.client(T, BACKUP_S3_KEYS)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=tenant.backup_bucket)
            for o in page.get("Contents", [])]
    assert f"pgbackrest/backup/{T}/{backup['label']}/backup.manifest" in keys
    obj = s3.get_object(Bucket=tenant.backup_bucket, Key=str(bundle["object"]))
    sealed = obj["Body"].read()
    assert obj["Metadata"]["appliance-version"] == bundle["appliance_version"]
    assert obj["Metadata"]["postgres-version"] == bundle["postgres_version"]
    assert hashlib.sha256(sealed).hexdigest() == bundle["sha256"]
    # Sealed: no secret and no stream content readable in the object.
    for name in TENANT_SECRETS:
        assert tenant.read_secret(name).encode()[:24] not in sealed
    assert b"entry 1 of" not in sealed
    # pgBackRest's own repository is encrypted too: a manifest does not show file names.
    manifest = s3.get_object(Bucket=tenant.backup_bucket, Key=f"pgbackrest/backup/{T}/{backup['label']}/"
                                                             "backup.manifest")["Body"].read()
    assert b"pg_data" not in manifest


def test_backup_status_reports_the_last_full_and_archiving(rig: Rig) -> None:
    status = cli_json(rig, "backup", "status", T)
    assert status["healthy"] is True, status["problems"]
    last_full = status["last_full"]
    assert isinstance(last_full, dict) and last_full["age_s"] is not None
    archive = status["archive"]
    assert isinstance(archive, dict) and archive["enabled"] is True and archive["last_archived_wal"]


def test_round_trip_into_a_scratch_instance_gives_back_the_same_data_and_streams(rig: Rig) -> None:
    tenant = rig.tenant(T)
    with rig.connect(T) as conn:
        house = add_house(conn, "round trip")
    thread = add_thread(rig, T, house, 250)
    cli_json(rig, "backup", T)  # a differential one: the restore needs the full one under it
    with rig.connect(T) as conn:
        expected = {table: table_state(conn, table) for table in ("houses", "threads", "notes")}
    switch_and_archive(rig)

    result = cli_json(rig, "restore", T, "--to-scratch")
    scratch = result["scratch"]
    assert isinstance(scratch, dict)
    try:
        import psycopg

        with psycopg.connect(host=str(scratch["postgres_socket_dir"]), port=int(scratch["postgres_port"]),
                             user="postgres", password=tenant.read_secret("db_superuser_password"),
                             dbname=tenant.postgres.database, autocommit=True) as conn:
            assert {table: table_state(conn, table) for table in expected} == expected
            assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
            # Archiving is off in a scratch instance: it must never push into the tenant's repository.
            assert conn.execute("show archive_mode").fetchone() == ("off",)
        assert stream_body(tenant, thread, int(scratch["streams_port"])) == stream_body(tenant, thread)
    finally:
        dropped = rig.cli("restore", T, "--drop-scratch", str(scratch["name"]))
    assert dropped.returncode == 0, dropped.stderr
    assert not Path(str(scratch["root"])).exists()


def test_point_in_time_restore_keeps_what_came_before_and_drops_what_came_after(rig: Rig) -> None:
    with rig.connect(T) as conn:
        conn.execute("create table if not exists pitr_markers (name text primary key, at timestamptz default now())")
        conn.execute("insert into pitr_markers (name) values ('before')")
        time.sleep(0.2)
        target = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
        time.sleep(0.2)
        conn.execute("insert into pitr_markers (name) values ('after')")
    switch_and_archive(rig)

    result = cli_json(rig, "restore", T, "--to-scratch", "--time", target.isoformat())
    scratch = result["scratch"]
    assert isinstance(scratch, dict)
    try:
        import psycopg

        tenant = rig.tenant(T)
        with psycopg.connect(host=str(scratch["postgres_socket_dir"]), port=int(scratch["postgres_port"]),
                             user="postgres", password=tenant.read_secret("db_superuser_password"),
                             dbname=tenant.postgres.database, autocommit=True) as conn:
            names = [r[0] for r in conn.execute("select name from pitr_markers order by name")]
        assert names == ["before"]
    finally:
        rig.cli("restore", T, "--drop-scratch", str(scratch["name"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("restore", "nosuch", "--to-scratch"), "no tenant 'nosuch'"),
        (("backup", "nosuch"), "no tenant 'nosuch'"),
        (("drill", "nosuch"), "no tenant 'nosuch'"),
        (("restore", T, "--to-scratch", "--time", "last tuesday"), "is not an ISO 8601 time"),
        (("restore", T, "--to-scratch", "--time", "2001-01-01T00:00:00Z"), "before the first backup"),
        (("restore", T, "--to-scratch", "--time", "2999-01-01T00:00:00Z"), "is in the future"),
        (("restore", T), "Pass --yes to confirm"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(rig: Rig, args: tuple[str, ...], message: str) -> None:
    before = subprocess.run(["supervisorctl", "pid", f"appliance-{T}-postgres"], capture_output=True, text=True)
    result = rig.cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    after = subprocess.run(["supervisorctl", "pid", f"appliance-{T}-postgres"], capture_output=True, text=True)
    assert before.stdout == after.stdout  # the live tenant was not touched
    assert not list(backup_paths(rig.tenant(T)).scratch_root.glob("*/scratch.json"))


def test_secrets_are_never_in_process_lists_logs_files_or_outputs(rig: Rig) -> None:
    tenant = rig.tenant(T)
    secret_values = {name: tenant.read_secret(name) for name in TENANT_SECRETS}
    seen_argv: list[str] = []
    backup = subprocess.Popen([str(APPLIANCE_BIN), "backup", T, "--json"], env=rig.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    while backup.poll() is None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    seen_argv.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    continue
        time.sleep(0.05)
    out, err = backup.communicate()
    assert backup.returncode == 0, err
    assert any("pgbackrest" in argv for argv in seen_argv)  # we did look while pgBackRest ran
    places = {
        "argv": "\n".join(seen_argv),
        "backup output": out + err,
        "pgbackrest.conf": backup_paths(tenant).config.read_text(),
        "wrapper": backup_paths(tenant).wrapper.read_text(),
    }
    for log in tenant.logs_dir.glob("*.log"):
        places[str(log)] = log.read_text(errors="replace")
    for report in backup_paths(tenant).drills.glob("*.json"):
        places[str(report)] = report.read_text()
    s3 = rig.store.client(T, BACKUP_S3_KEYS)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=tenant.backup_bucket, Prefix="bundles/"):
        for obj in page.get("Contents", []):
            places[obj["Key"]] = s3.get_object(Bucket=tenant.backup_bucket, Key=obj["Key"])["Body"].read().decode(
                errors="replace")
    for where, text in places.items():
        for name, value in secret_values.items():
            assert value[:16] not in text, f"secret {name} appears in {where}"


def test_the_scheduler_runs_its_backups_through_the_real_backup(rig: Rig) -> None:
    import threading

    from appliance.backup.schedule import run_schedule
    from appliance.backup.take import take_backup

    tenant = rig.tenant(T)
    before = len(pgbackrest.info(tenant)["backup"])
    fake_now = [dt.datetime.now().astimezone()]
    stop = threading.Event()
    made: list[str] = []

    def wait(seconds: float) -> bool:  # simulated time: the schedule's nights pass at once
        fake_now[0] += dt.timedelta(seconds=seconds)
        return stop.is_set()

    def run(kind: str) -> str:
        result = take_backup(rig.host, tenant, kind)  # type: ignore[arg-type]
        made.append(result.backup.type)
        if len(made) == 2:
            stop.set()
        return result.summary()

    run_schedule(lambda: tenant, run, lambda: True, log=lambda _: None, stop=stop,  # type: ignore[arg-type]
                 clock=lambda: fake_now[0], wait=wait)
    assert len(made) == 2 and set(made) <= {"full", "diff"}
    assert len(pgbackrest.info(tenant)["backup"]) == before + 2


def test_bundle_expiry_drops_what_no_restore_would_pick(rig: Rig) -> None:
    from appliance.backup import bundle
    from appliance.objectstore.client import put_object

    tenant = rig.tenant(T)
    s3 = rig.store.client(T, BACKUP_S3_KEYS)
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)

    def stamp(moment: dt.datetime) -> str:
        return f"bundles/{moment.strftime('%Y%m%dT%H%M%S%fZ')}.bundle"

    old_full_start = now - 4 * day
    planted = {
        "before the oldest full": stamp(now - 5 * day),
        "older of its day": stamp((now - 3 * day).replace(hour=1)),
        "newest of its day": stamp((now - 3 * day).replace(hour=2)),
        "recent": stamp(now - dt.timedelta(hours=1)),
        "recent too": stamp(now - dt.timedelta(minutes=30)),
    }
    for key in planted.values():
        put_object(s3, tenant.backup_bucket, key, b"x")
        put_object(s3, tenant.backup_bucket, key.replace(".bundle", ".json"), b"{}")
    try:
        expired = bundle.expire(s3, tenant, old_full_start, now=now)
        assert set(expired) >= {planted["before the oldest full"], planted["older of its day"]}
        left = {ref.key for ref in bundle.list_bundles(s3, tenant)}
        assert {planted["newest of its day"], planted["recent"], planted["recent too"]} <= left
        assert not {planted["before the oldest full"], planted["older of its day"]} & left
    finally:
        for key in planted.values():
            for name in (key, key.replace(".bundle", ".json")):
                s3.delete_object(Bucket=tenant.backup_bucket, Key=name)


def test_a_bundle_alone_is_taken_between_backups(rig: Rig) -> None:
    result = rig.cli("backup", T, "--bundle-only", "--json")
    assert result.returncode == 0, result.stderr
    descriptor = json.loads(result.stdout)
    latest = json.loads(rig.cli("backup", "status", T, "--json").stdout)
    # The bundle names the newest backup set, the one a restore from it would pair it with.
    newest = max(((latest.get(k) or {}).get("label") for k in ("last_full", "last_diff")), key=lambda x: x or "")
    assert newest is not None and descriptor["backup_label"] == newest


def test_restore_time_in_the_gap_before_a_backup_uses_an_older_one(rig: Rig) -> None:
    """A time between two backups restores from the older one plus WAL (not the newer, not-yet-consistent one)."""
    info = pgbackrest.info(rig.tenant(T))
    stops = sorted(b["timestamp"]["stop"] for b in info["backup"])
    assert len(stops) >= 2
    between = dt.datetime.fromtimestamp(stops[-1] - 0.5, dt.UTC)
    if between.timestamp() <= stops[-2] + 1:
        pytest.skip("the last two backups are too close together")
    result = cli_json(rig, "restore", T, "--to-scratch", "--time", between.isoformat())
    try:
        backup = result["backup"]
        assert isinstance(backup, dict)
        assert backup["label"] != info["backup"][-1]["label"]
    finally:
        scratch = result["scratch"]
        assert isinstance(scratch, dict)
        rig.cli("restore", T, "--drop-scratch", str(scratch["name"]))
