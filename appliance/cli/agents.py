"""`appliance agents serve --tenant <id>`: run a tenant's agent workers (what its service manager starts)."""

from __future__ import annotations

import os

import click

from appliance.config import load_tenant


@click.group()
def agents() -> None:
    """The tenant's agent workers (woken by mentions, replying into thread streams)."""


@agents.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (as in this host's config).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(tenant_id: str, log_level: str) -> None:
    """Serve the tenant's agent workers on its loopback port until SIGTERM."""
    import logging

    import uvicorn

    from appliance.agents.app import TENANT_ENV

    tenant = load_tenant(tenant_id)[1]
    os.environ[TENANT_ENV] = tenant.id
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: a webhook URL may carry a credential in its query string.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    click.echo(f"agent workers of {tenant.id} on http://{tenant.common.bind_address}:{tenant.port('agents')} "
               f"(state in {tenant.agents_data})", err=True)
    uvicorn.run(
        "appliance.agents.app:app_from_env", factory=True,
        # One process: replies are serialised per entry inside it (and it holds the agents dir's lock).
        host=tenant.common.bind_address, port=tenant.port("agents"), workers=1,
        log_level=log_level, proxy_headers=False, server_header=False, access_log=False,
        timeout_graceful_shutdown=10,
    )


@agents.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (as in this host's config).")
def handlers(tenant_id: str) -> None:
    """List the handlers an agent of this tenant may name, and the operator's webhook endpoints (names only)."""
    from appliance.agents.handlers import BUILTIN_NAMES, HandlerError, HandlerRegistry
    from appliance.agents.handlers.webhook import WEBHOOKS_FILE, load_endpoints

    tenant = load_tenant(tenant_id)[1]
    registry = HandlerRegistry(dict.fromkeys(BUILTIN_NAMES, lambda ctx: ""))
    click.echo("handlers: " + ", ".join(registry.names()))
    where = tenant.agents_data / WEBHOOKS_FILE
    try:
        endpoints = sorted(load_endpoints(tenant.agents_data))
    except HandlerError as exc:
        raise click.ClickException(f"{where}: {exc.message}") from None
    click.echo(f"webhook endpoints in {where}: " + (", ".join(endpoints) or "none"))
