"""`appliance audit`: ship the tenant's audit trail, prove it, hand it to auditors.

    appliance audit ship --tenant acme              the supervised shipper (runs until stopped)
    appliance audit ship --tenant acme --once       ship everything committed so far, then exit
    appliance audit verify acme [--from s3|db|both] every batch, manifest, checksum and hash; S3 vs Postgres
    appliance audit export acme --since 2026-01-01 [--until ISO] [--from s3|db] [-o FILE]
    appliance audit status acme                     lag (events, seconds) and the shipper's last error
    appliance audit record acme deploy [--detail JSON]   an operator action, appended to the chain
    appliance audit recover acme                after a restore: re-import shipped events the database lacks

Exit codes: 0 intact/done, 1 a break was found (verify, export) or the trail is unhealthy (status),
2 bad input (unknown tenant, malformed time or detail).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from appliance.config import load_tenant


def _parse_time(text: str, option: str) -> dt.datetime:
    from appliance.backup.errors import BadRequest
    from appliance.backup.target import parse_time

    try:
        return parse_time(text, option)
    except BadRequest as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.group()
def audit() -> None:
    """The tenant's audit trail: hash-chained events shipped to S3 Object Lock (COMPLIANCE)."""


@audit.command("ship")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose events to ship.")
@click.option("--once", is_flag=True, help="Ship everything committed so far, then exit.")
@click.option("--pause-at", hidden=True, metavar="POINT:MARKER",
              help="Tests only: stop dead at after_plan/after_put/after_record, writing MARKER, to be killed.")
def ship(tenant_id: str, once: bool, pause_at: str | None) -> None:
    """Ship TENANT's audit events to its locked bucket, exactly once, in batches by size or age."""
    from appliance.audit.db import connect_audit
    from appliance.audit.shipper import PAUSE_POINTS, Shipper, serve
    from appliance.audit.store import audit_client

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, tenant = load_tenant(tenant_id)
    pause: tuple[str, Path] | None = None
    if pause_at:
        point, _, marker = pause_at.partition(":")
        if point not in PAUSE_POINTS or not marker:
            raise click.BadParameter(f"expected one of {PAUSE_POINTS} and a marker path", param_hint="--pause-at")
        pause = (point, Path(marker))
    s3 = audit_client(host, tenant)
    if once:
        from appliance.audit.shipper import Halt, ShipperBusy
        from appliance.audit.store import StoreError

        shipper = Shipper(tenant, s3, lambda: connect_audit(tenant), pause_at=pause)
        try:
            shipped = shipper.drain()
        except (Halt, StoreError, ShipperBusy) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        finally:
            shipper.close()
        click.echo(f"{tenant_id}: audit events shipped through seq {shipped} to {tenant.audit_bucket}")
        return
    serve(tenant, s3, lambda: connect_audit(tenant), pause_at=pause)


@audit.command("verify")
@click.argument("tenant_id")
@click.option("--from", "source", type=click.Choice(["s3", "db", "both"], case_sensitive=False), default="both",
              show_default=True, help="Check the shipped batches, the Postgres chain, or both and their agreement.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(tenant_id: str, source: str, as_json: bool) -> None:
    """Prove TENANT's audit trail end to end; name the first break (seq, what differs) and exit 1 if any."""
    from appliance.audit.verify import verify

    host, tenant = load_tenant(tenant_id)
    report = verify(host, tenant, source.lower())  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        click.echo(report.summary())
        if not report.ok:
            click.echo("next: the seq above is where to look; `appliance audit export "
                       f"{tenant_id} --since <time before it>` gives auditors the surrounding events")
    sys.exit(0 if report.ok else 1)


@audit.command("export")
@click.argument("tenant_id")
@click.option("--since", "since_text", required=True, metavar="ISO", help="Events at or after this time.")
@click.option("--until", "until_text", metavar="ISO", help="Events before this time.")
@click.option("--from", "source", type=click.Choice(["s3", "db"], case_sensitive=False), default="s3",
              show_default=True, help="The shipped, locked copy, or Postgres (includes events not shipped yet).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the JSONL here instead of standard output.")
def export_command(tenant_id: str, since_text: str, until_text: str | None, source: str,
                   output: Path | None) -> None:
    """Write TENANT's events since a time as canonical JSONL (one event with prev_hash and hash per line)."""
    from appliance.audit.export import export_events

    since = _parse_time(since_text, "--since")
    until = _parse_time(until_text, "--until") if until_text else None
    host, tenant = load_tenant(tenant_id)
    if output is not None:
        with output.open("wb") as out:
            result = export_events(host, tenant, out, since, until, source.lower())  # type: ignore[arg-type]
    else:
        result = export_events(host, tenant, sys.stdout.buffer, since, until, source.lower())  # type: ignore[arg-type]
        sys.stdout.flush()
    click.echo(result.summary(), err=True)
    if output is not None:
        click.echo(f"written to {output}; the hash recipe is in appliance/audit/canonical.py", err=True)
    sys.exit(0 if result.ok else 1)


@audit.command("status")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True)
def status_command(tenant_id: str, as_json: bool) -> None:
    """How far TENANT's shipping lags (events, seconds) and why; exit 1 if unhealthy."""
    from appliance.audit.status import audit_status

    _, tenant = load_tenant(tenant_id)
    status = audit_status(tenant)
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
    else:
        click.echo(f"{tenant_id}: audit {'healthy' if status['healthy'] else 'UNHEALTHY'}: {status['detail']}")
    sys.exit(0 if status["healthy"] else 1)


@audit.command("recover")
@click.argument("tenant_id")
def recover_command(tenant_id: str) -> None:
    """After a restore, before anything writes: bring back from the store the shipped events TENANT's database
    lacks (checked, with their original hashes), so the chain goes on without forking. Exit 1 on a conflict."""
    from appliance.audit.recover import RecoverError, recover_from_store

    host, tenant = load_tenant(tenant_id)
    try:
        result = recover_from_store(host, tenant)
    except RecoverError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{tenant_id}: {result.summary()}")
    click.echo(f"next: `appliance audit verify {tenant_id}`")


@audit.command("record")
@click.argument("tenant_id")
@click.argument("action")
@click.option("--detail", "detail_text", default="{}", metavar="JSON", help="A JSON object (no floats).")
def record_command(tenant_id: str, action: str, detail_text: str) -> None:
    """Append an operator ACTION (deploy, restore, key_rotation, tenant_destroy) to TENANT's chain."""
    from appliance.audit.operator import record_operator_action

    try:
        detail: Any = json.loads(detail_text)
    except ValueError:
        raise click.BadParameter("not JSON", param_hint="--detail") from None
    if not isinstance(detail, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--detail")
    _, tenant = load_tenant(tenant_id)
    try:
        seq = record_operator_action(tenant, action, detail)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{tenant_id}: operator.{action} recorded as audit event seq {seq}")
