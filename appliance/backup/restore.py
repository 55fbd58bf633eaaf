"""Restores: into a scratch instance beside the live tenant, or in place.

In place (`restore_in_place`), in this order, each step checked before the next:
1. secrets: the tenant's own if its secrets dir is whole, else the recovery keys (root-only copy, or an
   operator's offline copy) open the bucket and the newest bundle puts the secrets back;
2. the target: `pgbackrest info` must hold a backup that reaches it (else nothing is touched);
3. the side bundle is downloaded and verified before anything is stopped;
4. the tenant's services stop through the service manager, dependents first; a running Postgres first switches
   WAL and waits until that segment is archived, so a restore to the latest state loses nothing acknowledged;
5. pgBackRest restores (delta when a data dir is there), Postgres replays WAL and promotes at the target;
6. streams and agents data come back from the bundle only where the live ones are gone (both only grow,
   so live data is never older than a bundle); the sync engine's state, a cache of Postgres, is emptied so
   that it rebuilds from the restored database;
7. services start, Postgres first, and every one must answer its health probe; then `pgbackrest check` proves
   archiving works on the restored cluster's new timeline.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from appliance.backup import bundle, capsule, generations, pgbackrest
from appliance.backup.errors import BackupError
from appliance.backup.scratch import Scratch, new_scratch
from appliance.backup.stanza import RECOVERY_SECRETS, ensure_recovery_keys, held_secrets_key, load_recovery_keys
from appliance.backup.target import BackupSet, choose_set, pg_time
from appliance.config import BACKUP_S3_KEYS, TENANT_SECRETS, HostConfig, TenantConfig
from appliance.objectstore.credentials import S3Credentials, tenant_credentials

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class RestoreResult:
    tenant: str
    mode: str  # "in-place" or "scratch"
    target: str  # "latest" or the ISO time
    backup: dict[str, Any]
    bundle: dict[str, Any]
    seconds: float
    steps: list[str] = field(default_factory=list)
    scratch: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "mode": self.mode, "target": self.target, "backup": self.backup,
                "bundle": self.bundle, "seconds": round(self.seconds, 2), "steps": self.steps,
                "scratch": self.scratch}


@dataclass(frozen=True)
class Keys:
    """What opens the tenant's backups: S3 keys and each kept cipher generation's passphrase, by generation
    (repr hides them)."""

    creds: S3Credentials
    passphrases: dict[int, str] = field(repr=False)
    generation: int = 1  # the current one
    source: str = "tenant secrets"
    # Opens the bundles' secrets capsule (appliance.backup.capsule): the recovery keys', None without them.
    secrets_key: str | None = field(default=None, repr=False)

    def passphrase_for(self, descriptor: bundle.Descriptor) -> str:
        """The passphrase the bundle was sealed with."""
        try:
            return self.passphrases[descriptor.generation]
        except KeyError:
            raise BackupError(
                f"bundle {descriptor.key} was sealed in cipher generation {descriptor.generation}, which is retired "
                f"(kept: {sorted(self.passphrases)}): restore to a later time") from None


def keys_for(tenant: TenantConfig, recovery_file: Path | None = None) -> Keys:
    if recovery_file is None and all(tenant.secret_path(n).is_file() for n in RECOVERY_SECRETS):
        return Keys(tenant_credentials(tenant, BACKUP_S3_KEYS), generations.passphrases(tenant),
                    generations.current(tenant), secrets_key=held_secrets_key(tenant))
    keys = load_recovery_keys(tenant, recovery_file)
    creds = S3Credentials(keys[BACKUP_S3_KEYS.access_key], keys[BACKUP_S3_KEYS.secret_key])
    return Keys(creds, {keys.generation: keys.passphrase, **keys.kept}, keys.generation,
                f"recovery keys {recovery_file or 'on this host'}", keys.secrets_key)


def _chown_tree(path: Path, owner: tuple[int, int]) -> None:
    if os.geteuid() != 0:
        return
    os.chown(path, *owner)
    for child in path.rglob("*"):
        os.chown(child, *owner, follow_symlinks=False)


def _copy_tree(source: Path, dest: Path, owner: tuple[int, int]) -> None:
    """Copy a bundle dir into place, private to the tenant."""
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copytree(source, dest, dirs_exist_ok=True)
    for path in [dest, *dest.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    _chown_tree(dest, owner)


def bundle_secrets(unpacked: Path, secrets_key: str | None) -> dict[str, str]:
    """The secrets an unpacked bundle holds: sealed by root (appliance.backup.capsule), opened with the recovery
    keys' `secrets_key`, or plainly in a bundle made before."""
    sealed = unpacked / capsule.IN_BUNDLE
    if sealed.is_file():
        if not secrets_key:
            raise BackupError("the bundle's secrets are sealed with the recovery keys' secrets_key, and none is at "
                              "hand: pass the recovery keys file with --recovery-file")
        return capsule.open_capsule(sealed, secrets_key)
    plain = unpacked / "secrets"
    return {name: (plain / name).read_text() for name in TENANT_SECRETS if (plain / name).is_file()}


def put_back_secrets(tenant: TenantConfig, unpacked: Path, opened_with: S3Credentials | None = None,
                     secrets_key: str | None = None) -> list[str]:
    """Write the bundle's secrets that the tenant lacks (existing ones are the current truth: never replaced).

    `opened_with`: the backup's S3 pair the bundle was fetched with (from the recovery keys), written when the
    bundle has none: one made before the backup had a pair of its own holds only the audit shipper's.
    `secrets_key` opens the bundle's secrets (needed only when some are missing)."""
    owner = pgbackrest.tenant_ids(tenant)
    for path in (tenant.root, tenant.secrets_dir):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, *owner)
    restored = []
    missing = [name for name in TENANT_SECRETS if not tenant.secret_path(name).exists()]
    held = bundle_secrets(unpacked, secrets_key) if missing else {}
    for name in missing:
        if name in held:
            from appliance.secrets import secret_access, write_private

            mode, uid, gid = secret_access(tenant, name) if os.geteuid() == 0 else (0o600, *owner)
            write_private(tenant.secret_path(name), held[name], uid, gid, mode)
            restored.append(name)
    if opened_with is not None:
        from appliance.secrets import secret_access, write_private

        for name, value in zip(BACKUP_S3_KEYS.files, (opened_with.access_key, opened_with.secret_key), strict=True):
            target = tenant.secret_path(name)
            if not target.exists():
                mode, uid, gid = secret_access(tenant, name) if os.geteuid() == 0 else (0o600, *owner)
                write_private(target, value, uid, gid, mode)
                restored.append(name)
    return restored


def ensure_tenant_dirs(tenant: TenantConfig) -> None:
    """The tenant's directory skeleton (as the deploy makes it), for a tenant whose directory is gone."""
    owner = pgbackrest.tenant_ids(tenant)
    for path in (tenant.root, tenant.secrets_dir, tenant.logs_dir, tenant.run_dir, tenant.pg_socket_dir,
                 tenant.pg_data.parent, tenant.streams_data, tenant.sync_data, tenant.agents_data, tenant.identity_data,
                 tenant.backup_dir):
        if not path.is_dir():
            path.mkdir(mode=0o700, parents=True)
            if os.geteuid() == 0:
                os.chown(path, *owner)


def restore_options(tenant: TenantConfig, chosen: BackupSet, at: dt.datetime | None, *,
                    pg_data: Path | None = None, spool: Path | None = None, archive_off: bool = False,
                    delta: bool = False) -> list[str]:
    options = [f"--repo={chosen.repo}", f"--set={chosen.label}"]
    if at is not None:
        options += ["--type=time", f"--target={pg_time(at)}", "--target-action=promote"]
    extra = []
    if pg_data is not None:
        options.append(f"--pg1-path={pg_data}")
        extra.append(f"--pg1-path={pg_data}")
    if spool is not None:
        extra.append(f"--spool-path={spool}")
    options.append(f"--recovery-option=restore_command={pgbackrest.restore_command(tenant, *extra)}")
    if archive_off:
        options.append("--archive-mode=off")
    if delta:
        options.append("--delta")
    return options


def effective_target(tenant: TenantConfig, at: dt.datetime | None, info: dict[str, Any]
                     ) -> tuple[dt.datetime | None, str | None]:
    """The recovery target to ask Postgres for, and a note when it differs from `at`.

    With the live cluster up, a commit is made and archived so that `at` is reachable. With it down, a time
    after the newest archived commit cannot be reached as a time, but everything archived is then exactly the
    state at that time: restore that instead, and say so."""
    from appliance.backup.archive import archive_max, newest_archived_commit

    if at is None or _flush_wal(tenant) is not None:
        return at, None
    newest = newest_archived_commit(tenant, archive_max(info))
    if newest is None or newest <= at:
        return None, (f"no transaction in the archive after {at.isoformat()} (newest archived commit "
                      f"{newest.isoformat() if newest else 'none'}): restored everything archived, which is the "
                      "state at that time")
    return at, None


# -- scratch -----------------------------------------------------------------------------------------------
def restore_to_scratch(
    host: HostConfig, tenant: TenantConfig, at: dt.datetime | None = None, *, name: str | None = None,
    descriptor: bundle.Descriptor | None = None, progress: Progress = _quiet, timeout_s: float = 3600,
) -> tuple[Scratch, RestoreResult]:
    """Restore into a new scratch instance and start it; the caller stops it (`Scratch.remove`)."""
    started = time.monotonic()
    keys = keys_for(tenant)
    info = pgbackrest.info(tenant)
    chosen = choose_set(pgbackrest.info(tenant, every_generation=True), at)
    client = bundle.client_for(host, keys.creds)
    descriptor = descriptor or bundle.pick(client, tenant, at)
    recovery_target, note = effective_target(tenant, at, info)
    scratch = new_scratch(tenant, name)
    steps = [note] if note else []
    try:
        with bundle.fetched(host, tenant, keys.creds, descriptor, keys.passphrase_for(descriptor)) as unpacked:
            progress(f"bundle {descriptor.key} verified")
            owner = pgbackrest.tenant_ids(tenant)
            if (unpacked / "streams").is_dir():
                _copy_tree(unpacked / "streams", scratch.streams_data, owner)
            scratch.detail["stream_copies"] = [c.as_dict() for c in bundle.stream_copies(unpacked)]
        steps.append(f"streams from {descriptor.key}")
        progress(f"restoring backup {chosen.label} ({chosen.type}) to {'latest' if at is None else pg_time(at)}")
        pgbackrest.run(tenant, "restore", *restore_options(
            tenant, chosen, recovery_target, pg_data=scratch.pg_data, spool=scratch.spool, archive_off=True))
        steps.append(f"pgbackrest restore {chosen.label}")
        scratch.start_postgres()
        scratch.wait_promoted(timeout_s)
        steps.append("postgres recovered and promoted")
        scratch.start_streams()
        scratch.wait_streams()
        steps.append("streams server up")
    except BaseException:
        scratch.remove()
        raise
    seconds = time.monotonic() - started
    scratch.detail.update({"backup": chosen.label, "target": "latest" if at is None else at.isoformat(),
                           "bundle": descriptor.key, "seconds": round(seconds, 2)})
    scratch.save()
    result = RestoreResult(
        tenant.id, "scratch", "latest" if at is None else at.isoformat(), chosen.as_dict(), descriptor.as_dict(),
        seconds, steps,
        {"name": scratch.name, "root": str(scratch.root), "postgres_port": scratch.pg_port,
         "postgres_socket_dir": str(scratch.run_dir), "streams_port": scratch.streams_port},
    )
    return scratch, result


# -- in place ------------------------------------------------------------------------------------------------
def _manager(host: HostConfig) -> Any:
    from appliance.supervision import detect, manager

    return manager(detect(host.common.service_manager))


def _start_command(mgr: Any, spec: Any) -> list[str]:
    if mgr.name == "supervisor":
        return ["supervisorctl", "start", spec.name]
    return ["systemctl", "start", spec.unit_name]


def _specs(tenant: TenantConfig, mgr: Any = None) -> list[Any]:
    """The tenant's services the service manager knows: a restore stops and starts what the deploy installed
    (a service not installed on this host is not the restore's to start)."""
    from appliance.services import tenant_services

    specs = tenant_services(tenant)
    if mgr is None:
        return specs
    if mgr.name == "supervisor":
        states = mgr.states(specs)
        return [spec for spec in specs if states[spec.name].state != "ABSENT"]
    installed = []
    for spec in specs:
        load = subprocess.run(["systemctl", "show", spec.unit_name, "-p", "LoadState", "--value"],
                              capture_output=True, text=True).stdout.strip()
        if load != "not-found":
            installed.append(spec)
    return installed


def _flush_wal(tenant: TenantConfig, timeout_s: float = 120) -> str | None:
    """Commit a transaction, switch to a new WAL segment and wait until the finished one is archived; None when
    Postgres is down. Recovery to a time stops at the first commit after it, so a commit from now on makes any
    earlier time reachable; without one Postgres 13+ refuses ("recovery ended before configured recovery target
    was reached")."""
    from appliance.pg import connect

    try:
        with connect(tenant, database="postgres", timeout=3) as conn:
            conn.execute("select txid_current()")
            row = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
            segment = str(row[0]) if row else ""
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                done = conn.execute("select last_archived_wal from pg_stat_archiver").fetchone()
                if done and done[0] and str(done[0]) >= segment:
                    return segment
                time.sleep(0.2)
    except (psycopg.Error, OSError):
        return None
    raise BackupError(f"WAL segment {segment} of {tenant.id} was not archived within {timeout_s:.0f}s; not "
                      "stopping (a restore now would lose it): see the pgbackrest logs in "
                      f"{tenant.logs_dir}")


def _wait_healthy(host: HostConfig, tenant: TenantConfig, timeout_s: float) -> None:
    """Every service of the tenant answering its health probe."""
    from appliance.status import component_status

    deadline = time.monotonic() + timeout_s
    mgr = _manager(host)
    specs = _specs(tenant, mgr)
    while True:
        states = mgr.states(specs)
        unhealthy = {}
        for spec in specs:
            if spec.port is None:
                # A service without a port (the backup scheduler) has nothing to probe: running is healthy.
                if not states[spec.name].running:
                    unhealthy[spec.component] = f"not running ({states[spec.name].state})"
                continue
            status = component_status(spec, states[spec.name], host)
            if not status.healthy:
                unhealthy[spec.component] = status.detail
        if not unhealthy:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"after the restore, {tenant.id} is not healthy: {unhealthy}")
        time.sleep(0.3)


def _wait_postgres(host: HostConfig, tenant: TenantConfig, timeout_s: float) -> None:
    """Postgres out of recovery (promoted); fail as soon as the service manager gives up on it."""
    from appliance.pg import connect

    mgr = _manager(host)
    spec = next(s for s in _specs(tenant) if s.component == "postgres")
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with connect(tenant, database="postgres", timeout=3) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
            if row and not row[0]:
                return
            last = "still in recovery"
        except (psycopg.Error, OSError) as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        state = mgr.states([spec])[spec.name].state
        if state in ("FATAL", "failed"):
            break
        time.sleep(0.3)
    tail = _fatal_line(tenant.log_file("postgres"))
    raise BackupError(f"postgres of {tenant.id} did not finish recovery ({tail or last}); "
                      f"log: {tenant.log_file('postgres')}")


def _fatal_line(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")[-20000:]
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if "FATAL" in line or "PANIC" in line]
    return lines[-1].strip() if lines else ""


def _audit_after_restore(host: HostConfig, tenant: TenantConfig, at: dt.datetime | None) -> list[str]:
    """Before anything writes again: take back the audit events the store holds beyond the restore point (the
    chain must continue from what was shipped, never fork it), then record the restore itself."""
    from appliance.audit.operator import record_operator_action
    from appliance.audit.recover import RecoverError, recover_from_store
    from appliance.pg import connect

    with connect(tenant, timeout=10) as conn:
        row = conn.execute("SELECT to_regclass('audit.events') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return ["audit: the restored database has no audit trail (schema never migrated)"]
    try:
        recovered = recover_from_store(host, tenant)
    except RecoverError as exc:
        raise BackupError(f"audit trail of {tenant.id} after the restore: {exc}") from None
    seq = record_operator_action(tenant, "restore", {"target": "latest" if at is None else at.isoformat()})
    return [f"audit: {recovered.summary()}", f"audit: restore recorded as event {seq}"]


def restore_in_place(
    host: HostConfig, tenant: TenantConfig, at: dt.datetime | None = None, *, recovery_file: Path | None = None,
    progress: Progress = _quiet, timeout_s: float | None = None,
) -> RestoreResult:
    started = time.monotonic()
    timeout_s = timeout_s or max(600.0, float(host.common.health_timeout_s))
    steps: list[str] = []
    owner = pgbackrest.tenant_ids(tenant)
    keys = keys_for(tenant, recovery_file)
    client = bundle.client_for(host, keys.creds)
    refs = bundle.list_bundles(client, tenant)
    descriptor = bundle.describe(client, tenant, bundle.choose(refs, at))
    # One download of the bundle: it brings the secrets back first when they are gone (pgBackRest cannot run
    # without them), and the streams and agents' state later.
    with bundle.fetched(host, tenant, keys.creds, descriptor, keys.passphrase_for(descriptor)) as unpacked:
        if keys.source != "tenant secrets":
            progress(f"secrets of {tenant.id} missing; taking them from bundle {descriptor.key} (opened with the "
                     f"{keys.source})")
            ensure_tenant_dirs(tenant)
            # The cipher generations first: the bundle's passphrase is the one it was sealed with, maybe an
            # earlier generation's than the recovery keys' current one.
            restored = generations.install(tenant, keys.generation, keys.passphrases[keys.generation],
                                           {n: p for n, p in keys.passphrases.items() if n != keys.generation})
            restored += put_back_secrets(tenant, unpacked, keys.creds, keys.secrets_key)
            steps.append(f"secrets restored from the bundle: {len(restored)}")
        ensure_tenant_dirs(tenant)
        changed = pgbackrest.ensure_files(host, tenant)
        if changed:
            steps.append("pgbackrest files rendered")
        info = pgbackrest.info(tenant)
        chosen = choose_set(pgbackrest.info(tenant, every_generation=True), at)
        recovery_target, note = effective_target(tenant, at, info)
        if note:
            steps.append(note)
        progress(f"bundle {descriptor.key} verified; stopping {tenant.id}")
        mgr = _manager(host)
        specs = _specs(tenant, mgr)
        if not any(spec.component == "postgres" for spec in specs):
            raise BackupError(f"the service manager has no postgres service for {tenant.id}: deploy the tenant first")
        for spec in reversed(specs):
            if spec.component == "postgres":
                flushed = _flush_wal(tenant)
                if flushed:
                    steps.append(f"WAL up to {flushed} archived")
            subprocess.run(mgr.stop_command(spec), capture_output=True, timeout=300)
            steps.append(f"stopped {spec.name}")
        pid_file = tenant.pg_data / "postmaster.pid"
        if pid_file.exists():
            raise BackupError(f"postgres of {tenant.id} is still running ({pid_file}); not restoring over it")
        has_data = (tenant.pg_data / "PG_VERSION").is_file()
        tenant.pg_data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(tenant.pg_data, *owner)
        progress(f"restoring backup {chosen.label} ({chosen.type}) to {'latest' if at is None else pg_time(at)}")
        pgbackrest.run(tenant, "restore", *restore_options(tenant, chosen, recovery_target, delta=has_data))
        steps.append(f"pgbackrest restore {chosen.label}" + (" (delta)" if has_data else ""))
        for name, live in (("streams", tenant.streams_data), ("agents", tenant.agents_data)):
            present = live.is_dir() and any(live.iterdir())
            if not present and (unpacked / name).is_dir():
                _copy_tree(unpacked / name, live, owner)
                steps.append(f"{name} data restored from {descriptor.key}")
        put_back_secrets(tenant, unpacked, secrets_key=keys.secrets_key)
        if os.geteuid() == 0:
            # The agents' files back to their own user, and the secret and directory modes it relies on, when
            # the host has it (a host deployed before the split does not).
            from appliance.host.users import account, ensure_users

            if account(tenant.agents_user) is not None:
                steps.extend(ensure_users(tenant))
    if tenant.sync_data.is_dir():
        for child in tenant.sync_data.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        steps.append("sync state emptied (rebuilt from the restored database)")
    progress(f"starting {tenant.id}")
    for spec in specs:
        result = subprocess.run(_start_command(mgr, spec), capture_output=True, text=True, timeout=300)
        if result.returncode != 0 and "already started" not in result.stdout + result.stderr:
            raise BackupError(f"starting {spec.name} failed: {(result.stdout + result.stderr).strip()[-300:]}; "
                              f"log: {spec.log_file}")
        if spec.component == "postgres":
            _wait_postgres(host, tenant, timeout_s)
            steps.extend(_audit_after_restore(host, tenant, at))
    _wait_healthy(host, tenant, timeout_s)
    steps.append("services healthy")
    # The host's recovery keys and secrets capsule, for the secrets as restored (the capsule's key kept from the
    # recovery keys the restore used, so that an offline copy of them still opens the bundles to come).
    steps.extend(ensure_recovery_keys(tenant, secrets_key=keys.secrets_key))
    pgbackrest.run(tenant, "check", timeout=300)
    steps.append("archiving checked (pgbackrest check)")
    return RestoreResult(tenant.id, "in-place", "latest" if at is None else at.isoformat(), chosen.as_dict(),
                         descriptor.as_dict(), time.monotonic() - started, steps)
