"""Drills: restore the latest backup to a point in time in a scratch instance and prove it equal to the source.

    >>> report = run_drill(host, tenant)
    >>> report.ok, report.rto_s, report.rpo["rpo_s"]

How "equal to the source as of the restore point" is made exact on a tenant that keeps writing:
1. a marker row `before` is committed (in the cluster's `postgres` database, table appliance_drill_markers:
   never in the tenant's own schema);
2. one transaction on the tenant's database takes SHARE locks on every table (writers wait a few ms; the lock
   is granted only once every earlier writer has committed and is visible), exports its snapshot, reads
   clock_timestamp() as the restore point T and commits. Every commit before the lock is in that snapshot with
   a commit time < T; every later one commits after T. So recovering to T (recovery_target_time, inclusive)
   gives exactly the snapshot's contents;
3. a marker row `after` is committed (its commit is after T, and recovery needs a commit past T to stop);
   `pgbackrest check` then switches WAL and waits until it is archived;
4. the latest backup set is restored to T into a scratch instance (RTO: until it is promoted and its streams
   server answers), while `pgbackrest verify` reads the whole repository and the source's per-table row counts
   and content checksums are computed inside the exported snapshot;
5. then: the same counts and checksums on the scratch, `before` present and `after` absent, pg_amcheck, every
   stream byte-equal to the bundle and to the source's first bytes and served to its recorded offset, the
   audit chain (when appliance.audit.chain exists) unbroken and a prefix of the source's;
6. the scratch instance is stopped and removed, whatever happened.

RPO is measured first, before the drill itself forces any WAL out (see `archive.recovery_point`).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from appliance.backup import archive, bundle, pgbackrest
from appliance.backup import streams as streams_mod
from appliance.backup.errors import BackupError, BadRequest
from appliance.backup.paths import backup_paths
from appliance.backup.report import DrillReport
from appliance.backup.restore import restore_to_scratch
from appliance.backup.scratch import Scratch
from appliance.backup.target import backup_sets
from appliance.backup.verify import Verification, verify
from appliance.config import HostConfig, TenantConfig
from appliance.pg import connect

MARKERS = "appliance_drill_markers"
LOCK_TIMEOUT = "15s"
# Text forms of values must not depend on session settings, or equal rows would hash differently.
_SESSION = ("SET TIME ZONE 'UTC'", "SET datestyle = 'ISO, MDY'", "SET intervalstyle = 'postgres'",
            "SET extra_float_digits = 3", "SET bytea_output = 'hex'")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind = 'r' and not c.relispartition and n.nspname not in ('pg_catalog', 'information_schema') "
        "and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' order by 1"
    ).fetchall()
    # Partitions are covered through their parent: a plain table scan of the parent reads them all.
    rows += conn.execute(
        "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.relkind = 'p' and not c.relispartition order by 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def fingerprints(conn: psycopg.Connection, tables: list[str]) -> dict[str, tuple[int, str]]:
    """Per table: row count and an order-independent 128-bit content checksum (sums of row md5 halves)."""
    for statement in _SESSION:
        conn.execute(statement)
    result = {}
    for table in tables:
        # `table` is already a quoted identifier (format('%I.%I') in user_tables).
        query = sql.SQL(
            "select count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0), "
            "coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint), 0) "
            "from (select md5(appliance_drill_row::text) as h from {} as appliance_drill_row) as rows"
        ).format(sql.SQL(table))
        row = conn.execute(query).fetchone()
        assert row is not None
        result[table] = (int(row[0]), f"{int(row[1]) & (2**80 - 1):x}{int(row[2]) & (2**80 - 1):x}")
    return result


class _SourceSnapshot:
    """The restore point on the live tenant: markers around it, and an open snapshot of exactly it."""

    def __init__(self, tenant: TenantConfig, drill_id: str) -> None:
        self.tenant = tenant
        self.drill_id = drill_id
        self.snapshot_conn: psycopg.Connection | None = None
        self.tables: list[str] = []
        self.target: dt.datetime | None = None

    def _marker(self, phase: str) -> dt.datetime:
        with connect(self.tenant, database="postgres") as conn:
            conn.execute(f"create table if not exists {MARKERS} (drill text not null, phase text not null, "
                         "at timestamptz not null default clock_timestamp(), primary key (drill, phase))")
            row = conn.execute(f"insert into {MARKERS} (drill, phase) values (%s, %s) returning at",
                               (self.drill_id, phase)).fetchone()
        assert row is not None
        at: dt.datetime = row[0]
        return at

    def take(self) -> dt.datetime:
        self._marker("before")
        database = self.tenant.postgres.database
        locker = connect(self.tenant, database=database)
        reader = connect(self.tenant, database=database)
        try:
            # Explicit BEGIN/COMMIT on autocommit connections: the transaction boundaries are the point here.
            self.tables = user_tables(locker)
            locker.execute("begin isolation level repeatable read")
            locker.execute(f"set local lock_timeout = '{LOCK_TIMEOUT}'")
            if self.tables:
                locker.execute(sql.SQL("lock table {} in share mode").format(
                    sql.SQL(", ").join(sql.SQL(t) for t in self.tables)))
            row = locker.execute("select pg_export_snapshot()").fetchone()
            assert row is not None
            reader.execute("begin isolation level repeatable read read only")
            reader.execute(sql.SQL("set transaction snapshot {}").format(sql.Literal(str(row[0]))))
            stamp = locker.execute("select clock_timestamp()").fetchone()
            assert stamp is not None
            self.target = stamp[0]
            locker.execute("commit")
        except psycopg.errors.LockNotAvailable:
            reader.close()
            raise BackupError(f"could not lock the tables of {self.tenant.id} within {LOCK_TIMEOUT} (a long "
                              "transaction is writing); run the drill again") from None
        except BaseException:
            reader.close()
            raise
        finally:
            locker.close()
        self.snapshot_conn = reader
        self._marker("after")
        assert self.target is not None
        return self.target

    def fingerprints(self) -> dict[str, tuple[int, str]]:
        assert self.snapshot_conn is not None
        return fingerprints(self.snapshot_conn, self.tables)

    def close(self) -> None:
        if self.snapshot_conn is not None:
            self.snapshot_conn.close()
            self.snapshot_conn = None


class _Background(threading.Thread):
    """Runs one call beside the restore; keeps its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # reported in the drill, never lost
            self.error = exc

    def value(self) -> Any:
        self.join()
        if self.error is not None:
            raise self.error
        return self.result


def _amcheck(scratch: Scratch) -> tuple[bool, str]:
    binary = str(scratch.tenant.pg_bin("pg_amcheck"))
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": scratch.tenant.read_secret("db_superuser_password"),
           "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        [binary, "-h", str(scratch.run_dir), "-p", str(scratch.pg_port), "-U", "postgres", "--all",
         "--install-missing", "--jobs=2", "--no-strict-names"],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    out = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return True, "no corruption found in any database (heap and btree checks)"
    return False, (out.splitlines()[0] if out else f"exit code {result.returncode}")[:500]


def _audit_chain(tenant: TenantConfig, scratch: Scratch) -> tuple[str, bool, str]:
    """("ok"|"fail"|"skip", ok, detail)."""
    try:
        from appliance.audit import chain
    except ImportError:
        return "skip", True, "appliance.audit.chain does not exist yet"
    if not (hasattr(chain, "fetch_rows") and hasattr(chain, "verify_rows")):
        return "skip", True, "appliance.audit.chain has no fetch_rows/verify_rows"
    database = tenant.postgres.database
    with scratch.connect(database) as conn:
        present = conn.execute("select to_regclass('audit.events')").fetchone()
        if not present or present[0] is None:
            return "skip", True, "the restored database has no audit.events table"
        last_seq, last_hash, count = 0, None, 0
        while True:
            rows = chain.fetch_rows(conn, last_seq, 10_000)
            if not rows:
                break
            result = chain.verify_rows(rows, prev_hash=last_hash, first_seq=None if last_hash is None else last_seq + 1)
            if not result.ok:
                brk = result.first_break
                return "fail", False, f"chain broken at seq {brk.seq if brk else '?'}: {brk.reason if brk else ''}"
            count += result.count
            last_seq, last_hash = result.last_seq or last_seq, result.last_hash
    if count == 0:
        return "ok", True, "no audit events yet"
    with connect(tenant, database=database) as conn:
        source = conn.execute("select hash from audit.events where seq = %s", (last_seq,)).fetchone()
    if not source or source[0] != last_hash:
        return "fail", False, f"restored chain head (seq {last_seq}) is not the source's event {last_seq}"
    return "ok", True, f"{count} events verify; head seq {last_seq} equals the source's"


def run_drill(host: HostConfig, tenant: TenantConfig, *, progress: Progress = _quiet,
              keep_scratch: bool = False) -> DrillReport:
    started_at = dt.datetime.now(dt.UTC)
    drill_id = "drill-" + started_at.strftime("%Y%m%dT%H%M%S%fZ")
    report = DrillReport(tenant.id, drill_id, started_at)
    info = pgbackrest.info(tenant)
    sets = backup_sets(info)
    if not sets:
        raise BadRequest(f"tenant {tenant.id} has no backup yet: run `appliance backup {tenant.id} --full` first")
    from appliance.config import BACKUP_S3_KEYS
    from appliance.objectstore.credentials import tenant_credentials

    descriptor = bundle.pick(bundle.client_for(host, tenant_credentials(tenant, BACKUP_S3_KEYS)), tenant, None)
    report.bundle = descriptor.as_dict()
    report.backup = sets[-1].as_dict()  # what the restore to a fresh restore point will use

    progress("measuring RPO")
    try:
        report.rpo = archive.recovery_point(tenant).as_dict()
    except (BackupError, psycopg.Error, OSError) as exc:
        report.rpo = {"error": str(exc)}

    progress("marking the restore point")
    source = _SourceSnapshot(tenant, drill_id)
    scratch: Scratch | None = None
    try:
        target = source.take()
        report.target_time = target
        pgbackrest.run(tenant, "check", timeout=600)
        source_prints = _Background(source.fingerprints)
        verifier = _Background(lambda: verify(tenant))
        source_prints.start()
        verifier.start()
        progress(f"restoring the latest backup to {target.isoformat()} in a scratch instance")
        try:
            scratch, restored = restore_to_scratch(host, tenant, target, name=drill_id, descriptor=descriptor,
                                                   progress=progress)
            report.rto_s = restored.seconds
            report.backup = restored.backup
            report.scratch = dict(restored.scratch or {})
            report.passed("restore", f"latest backup {restored.backup['label']} restored to the restore point "
                                     f"and promoted in {restored.seconds:.1f}s")
        except BackupError as exc:
            report.fail("restore", f"{exc} (pgbackrest verify below names damaged files)")
        _check_verify(report, verifier)
        if scratch is not None:
            _compare(report, tenant, scratch, source, source_prints, drill_id)
    finally:
        source.close()
        if scratch is not None:
            if keep_scratch:
                report.scratch["removed"] = False
            else:
                progress("removing the scratch instance")
                scratch.remove()
                report.scratch["removed"] = not scratch.root.exists()
        else:
            report.scratch["removed"] = True
    report.finished_at = dt.datetime.now(dt.UTC)
    path = backup_paths(tenant).drills / f"{drill_id}.json"
    report.scratch["report"] = str(path)
    report.write(path)
    if os.geteuid() == 0:
        os.chown(path, *pgbackrest.tenant_ids(tenant))
    return report


def _check_verify(report: DrillReport, verifier: _Background) -> None:
    try:
        result: Verification = verifier.value()
    except BackupError as exc:
        report.fail("pgbackrest verify", str(exc))
        return
    if result.ok:
        report.passed("pgbackrest verify", f"repository valid ({result.summary}) in {result.seconds:.1f}s")
        return
    named = ", ".join(f"{b.problem} {b.file} (object {b.object_key})" for b in result.bad_files[:10])
    report.fail("pgbackrest verify", f"status {result.status}: {named or result.summary}",
                bad_files=[b.as_dict() for b in result.bad_files])


def _compare(report: DrillReport, tenant: TenantConfig, scratch: Scratch, source: _SourceSnapshot,
             source_prints: _Background, drill_id: str) -> None:
    # Tables: counts and checksums in the restore point's snapshot against the scratch.
    try:
        expected: dict[str, tuple[int, str]] = source_prints.value()
        with scratch.connect(tenant.postgres.database) as conn:
            got = fingerprints(conn, list(expected))
            restored_tables = set(user_tables(conn))
        rows, bad = 0, []
        for table, (count, digest) in expected.items():
            have = got.get(table)
            ok = have == (count, digest)
            rows += count
            report.tables.append({"table": table, "source_rows": count, "restored_rows": have[0] if have else None,
                                  "source_checksum": digest, "restored_checksum": have[1] if have else None,
                                  "ok": ok})
            if not ok:
                bad.append(table)
        extra = sorted(restored_tables - set(expected))
        if bad or extra:
            report.fail("tables", f"differ: {bad}" + (f"; only in the restore: {extra}" if extra else ""))
        else:
            report.passed("tables", f"{len(expected)} tables, {rows} rows: counts and content checksums equal")
    except (psycopg.Error, BackupError) as exc:
        report.fail("tables", f"comparison failed: {exc}")
    # Markers around the restore point.
    try:
        with scratch.connect("postgres") as conn:
            present = {r[0] for r in conn.execute(
                f"select phase from {MARKERS} where drill = %s", (drill_id,)).fetchall()}
        if present == {"before"}:
            report.passed("markers", "marker before the restore point present, marker after it absent")
        else:
            report.fail("markers", f"expected only 'before', found {sorted(present) or 'none'}")
    except psycopg.Error as exc:
        report.fail("markers", f"cannot read markers: {exc}")
    # Physical consistency.
    ok, detail = _amcheck(scratch)
    (report.passed if ok else report.fail)("pg_amcheck", detail)
    # Streams.
    copies = [streams_mod.StreamCopy.from_dict(c) for c in scratch.detail.get("stream_copies", [])]
    problems = streams_mod.compare_files(copies, scratch.streams_data, tenant.streams_data)
    problems += streams_mod.check_served(scratch.streams_url, copies)
    behind = streams_mod.unsaved_streams(copies, tenant.streams_data)
    total = sum(c.length for c in copies if not c.missing)
    report.streams = {"count": len(copies), "bytes": total,
                      "mismatches": [{"stream": p.path, "problem": p.problem} for p in problems],
                      "not_in_bundle": {"segments": len(behind), "bytes": sum(behind.values())}}
    note = (f"; {len(behind)} stream(s), {sum(behind.values())} bytes written since the bundle "
            "(in the next one)") if behind else ""
    if problems:
        report.fail("streams", f"{len(problems)} stream(s) differ: " +
                    "; ".join(f"{p.path}: {p.problem}" for p in problems[:5]))
    else:
        report.passed("streams", f"{len(copies)} streams, {total} bytes byte-equal to the bundle and the source, "
                                 f"served to their offsets{note}")
    # Audit chain.
    try:
        state, ok, detail = _audit_chain(tenant, scratch)
    except (psycopg.Error, BackupError) as exc:
        state, ok, detail = "fail", False, f"cannot verify: {exc}"
    if state == "skip":
        report.skip("audit chain", detail)
    else:
        (report.passed if ok else report.fail)("audit chain", detail)
