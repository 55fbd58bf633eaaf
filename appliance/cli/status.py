"""`appliance status [--json]`."""

from __future__ import annotations

import json
import sys

import click

from appliance.config import load_host_config
from appliance.status import all_healthy, collect


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON document scripts read.")
def status(as_json: bool) -> None:
    """Show every tenant's components: running, answering a real probe, pid, port, uptime.

    Exits 1 if anything is unhealthy.
    """
    host = load_host_config()
    report = collect(host)
    healthy = all_healthy(report)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        rows = [("host", name, c) for name, c in report["host"]["components"].items()]
        for tenant_id, tenant in report["tenants"].items():
            rows.extend((tenant_id, name, c) for name, c in tenant["components"].items())
        click.echo(f"{'TENANT':<10} {'COMPONENT':<12} {'STATE':<10} {'PID':>7} {'PORT':>6} {'UPTIME':>7}  DETAIL")
        for owner, name, c in rows:
            state = "healthy" if c["healthy"] else ("UNHEALTHY" if c.get("running", True) else "DOWN")
            pid = c.get("pid") or "-"
            port = c.get("port") or "-"
            click.echo(
                f"{owner:<10} {name:<12} {state:<10} {pid!s:>7} {port!s:>6} "
                f"{_uptime(c.get('uptime_s')):>7}  {c.get('detail', '')}"
            )
        urls = [(tenant_id, tenant["url"]) for tenant_id, tenant in report["tenants"].items() if "url" in tenant]
        if urls:
            click.echo("\n" + "\n".join(f"{tenant_id:<10} {url}" for tenant_id, url in urls))
        click.echo("\nall healthy" if healthy else "\nSOME COMPONENTS ARE UNHEALTHY (see DETAIL and the logs)")
    sys.exit(0 if healthy else 1)
