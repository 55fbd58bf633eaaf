"""`appliance backup|restore|drill`: back a tenant up now, restore it, prove it can be restored.

    appliance backup acme [--full]              one backup now (differential unless --full), and its side bundle
    appliance backup status acme                last full/diff, WAL archiving, last drill (exit 1 if unhealthy)
    appliance backup schedule --tenant acme     the supervised scheduler (runs until stopped)
    appliance restore acme [--time ISO] [--to-scratch]
    appliance drill acme                        restore into scratch, compare with the source, report

Exit codes: 0 done (drill: passed), 1 failed (drill: a mismatch), 2 bad input (unknown tenant, malformed or
unreachable --time, no backup yet).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance.config import TenantConfig, load_tenant

F = TypeVar("F", bound=Callable[..., Any])


def _progress(message: str) -> None:
    click.echo(f"... {message}", err=True)


def _errors(func: F) -> F:
    """BadRequest -> exit 2, any other BackupError -> exit 1, each as one `error:` line (never a traceback)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from appliance.backup.errors import BackupError, BadRequest

        try:
            return func(*args, **kwargs)
        except BadRequest as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BackupError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class _TenantGroup(click.Group):
    """`appliance backup <tenant>` runs a backup; `appliance backup <subcommand>` the rest."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["now", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TenantGroup)
def backup() -> None:
    """Back up a tenant now: `appliance backup TENANT [--full]`; or status/schedule (below)."""


@backup.command("now", hidden=True)
@click.argument("tenant_id")
@click.option("--full", "kind", flag_value="full", help="A full backup.")
@click.option("--diff", "kind", flag_value="diff", default=True, help="A differential backup (the default).")
@click.option("--incr", "kind", flag_value="incr", help="An incremental backup.")
@click.option("--bundle-only", "kind", flag_value="bundle",
              help="Only the side bundle (secrets, streams, agents' state): WAL archiving covers the database.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_errors
def backup_now(tenant_id: str, kind: str, as_json: bool) -> None:
    """Back up TENANT now (database through pgBackRest, then secrets/streams/config as a sealed bundle)."""
    from appliance.backup.take import take_backup, take_bundle

    host, tenant = load_tenant(tenant_id)
    if kind == "bundle":
        descriptor = take_bundle(host, tenant)
        click.echo(json.dumps(descriptor.as_dict(), indent=2) if as_json else
                   f"side bundle {descriptor.key} of {tenant_id}: {descriptor.files} files, {descriptor.streams} "
                   f"streams ({descriptor.stream_bytes} bytes), {descriptor.size} bytes sealed")
        return
    _progress(f"{kind} backup of {tenant_id} to {tenant.backup_bucket}")
    result = take_backup(host, tenant, kind)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(result.summary())
    click.echo(f"next: `appliance drill {tenant_id}` proves it restores; `appliance backup status {tenant_id}`")


@backup.command("status")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True)
@_errors
def backup_status_command(tenant_id: str, as_json: bool) -> None:
    """Last full/differential backups, WAL archiving and the last drill of TENANT; exit 1 if unhealthy."""
    from appliance.backup.status import backup_status, describe

    _, tenant = load_tenant(tenant_id)
    status = backup_status(tenant)
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
    else:
        click.echo(f"{tenant_id}: {'healthy' if status['healthy'] else 'UNHEALTHY'}: {describe(status)}")
    sys.exit(0 if status["healthy"] else 1)


@backup.command("schedule")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose backups to run.")
@_errors
def backup_schedule(tenant_id: str) -> None:
    """Run TENANT's full and differential backups on schedule until stopped (the supervised scheduler)."""
    import datetime as dt

    from appliance.backup.pgbackrest import info
    from appliance.backup.schedule import run_schedule
    from appliance.backup.take import take_backup, take_bundle
    from appliance.backup.target import backup_sets

    def load() -> TenantConfig:
        return load_tenant(tenant_id)[1]

    def run(kind: str) -> str:
        host, tenant = load_tenant(tenant_id)
        if kind == "bundle":
            return f"side bundle {take_bundle(host, tenant).key}"
        return take_backup(host, tenant, kind).summary()  # type: ignore[arg-type]

    def log(message: str) -> None:
        click.echo(f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')} {tenant_id}: {message}")
        sys.stdout.flush()

    run_schedule(load, run, lambda: bool(backup_sets(info(load()))), log=log)  # type: ignore[arg-type]


@backup.command("setup", hidden=True)
@click.argument("tenant_id")
@click.option("--files-only", is_flag=True, help="Only the config, wrapper and recovery keys (before Postgres runs).")
@_errors
def backup_setup(tenant_id: str, files_only: bool) -> None:
    """Host-side deploy step: the tenant's pgBackRest files, recovery keys and stanza (idempotent)."""
    from appliance.backup.stanza import ensure_files, ensure_stanza

    host, tenant = load_tenant(tenant_id)
    changes = ensure_files(host, tenant) if files_only else ensure_stanza(host, tenant)
    click.echo(f"backup of {tenant_id}: " + (", ".join(changes) if changes else "no change"))


@click.command()
@click.argument("tenant_id")
@click.option("--time", "time_text", metavar="ISO", help="Point in time to restore to (ISO 8601; no zone = UTC).")
@click.option("--to-scratch", is_flag=True, help="Restore beside the live tenant, on other ports and dirs.")
@click.option("--drop-scratch", "drop", metavar="NAME", help="Stop and remove a scratch instance ('all' for all).")
@click.option("--recovery-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Offline copy of the tenant's recovery keys (when its secrets and this host's copy are gone).")
@click.option("--yes", is_flag=True, help="In place over existing data: confirms that it is replaced.")
@click.option("--json", "as_json", is_flag=True)
@_errors
def restore(tenant_id: str, time_text: str | None, to_scratch: bool, drop: str | None, recovery_file: Path | None,
            yes: bool, as_json: bool) -> None:
    """Restore TENANT from its backups: in place (stops its services, restores, starts them, checks health),
    or with --to-scratch into a scratch instance left running for inspection."""
    from appliance.backup.restore import restore_in_place, restore_to_scratch
    from appliance.backup.scratch import Scratch
    from appliance.backup.target import parse_time

    host, tenant = load_tenant(tenant_id)
    if drop:
        names = Scratch.existing(tenant) if drop == "all" else [drop]
        for name in names:
            Scratch.load(tenant, name).remove()
            click.echo(f"scratch instance {name} of {tenant_id} stopped and removed")
        return
    at = parse_time(time_text) if time_text else None
    if to_scratch:
        scratch, result = restore_to_scratch(host, tenant, at, progress=_progress)
        if as_json:
            click.echo(json.dumps(result.as_dict(), indent=2))
            return
        click.echo(
            f"tenant {tenant_id} restored ({result.target}, backup {result.backup['label']}) into scratch "
            f"instance {scratch.name} in {result.seconds:.1f}s\n"
            f"  postgres: port {scratch.pg_port}, socket dir {scratch.run_dir} (the tenant's own roles and "
            f"passwords)\n  streams:  {scratch.streams_url}/\n  files:    {scratch.root}\n"
            f"next: inspect it, then `appliance restore {tenant_id} --drop-scratch {scratch.name}`"
        )
        return
    if (tenant.pg_data / "PG_VERSION").is_file() and not yes:
        what = f"as of {at.isoformat()}" if at else "at its latest archived state"
        raise click.UsageError(
            f"this replaces tenant {tenant_id}'s database with its backup {what}"
            + ("; everything written after that time is lost" if at else "")
            + ". Pass --yes to confirm, or use --to-scratch to look first."
        )
    result = restore_in_place(host, tenant, at, recovery_file=recovery_file, progress=_progress)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"tenant {tenant_id} restored in place ({result.target}, backup {result.backup['label']}, bundle "
               f"{result.bundle['object']}) in {result.seconds:.1f}s:")
    for step in result.steps:
        click.echo(f"  - {step}")
    click.echo(f"next: `appliance status`; a fresh full backup starts the new timeline: `appliance backup "
               f"{tenant_id} --full`")


@click.command()
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report here (it is always kept in the tenant's backup/drills dir).")
@click.option("--keep-scratch", is_flag=True, help="Leave the scratch instance running for inspection.")
@_errors
def drill(tenant_id: str, as_json: bool, report_path: Path | None, keep_scratch: bool) -> None:
    """Restore TENANT's latest backup to a fresh restore point in a scratch instance and prove it equal to the
    source (tables, markers, verify, amcheck, streams, audit chain); measure RTO and RPO. Exit 1 on mismatch."""
    from appliance.backup.drill import run_drill

    host, tenant = load_tenant(tenant_id)
    report = run_drill(host, tenant, progress=_progress, keep_scratch=keep_scratch)
    if report_path is not None:
        report.write(report_path)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.summary())
        click.echo(f"report: {report.scratch.get('report')}")
    sys.exit(0 if report.ok else 1)


# Registered on `appliance` by appliance/cli/__init__.py.
COMMANDS: dict[str, click.Command] = {"backup": backup, "restore": restore, "drill": drill}
