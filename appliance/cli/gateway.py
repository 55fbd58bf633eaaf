"""`appliance gateway serve --tenant <id>`: run a tenant's gateway (what its service manager starts)."""

from __future__ import annotations

import os

import click

from appliance.config import load_tenant


@click.group()
def gateway() -> None:
    """The tenant gateway (auth, shapes, writes, thread streams)."""


@gateway.command()
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (as in this host's config).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(tenant_id: str, log_level: str) -> None:
    """Serve the tenant's gateway on its loopback port until SIGTERM."""
    import uvicorn

    from appliance.gateway.main import TENANT_ENV
    from appliance.gateway.serving import NoDelayHTTPProtocol, front_door_socket, serve

    tenant = load_tenant(tenant_id)[1]
    os.environ[TENANT_ENV] = tenant.id
    config = uvicorn.Config(
        "appliance.gateway.main:app_from_env", factory=True,
        host=tenant.common.bind_address, port=tenant.port("gateway"), workers=tenant.gateway.workers,
        # uvicorn's proxy headers would trust every loopback caller alike; the gateway trusts the front door
        # by the socket it came in on instead (appliance.gateway.core.middleware.FrontDoorClient).
        log_level=log_level, proxy_headers=False, server_header=False, http=NoDelayHTTPProtocol,
        # Access lines are info: below that level none is ever printed, but uvicorn still formats each request's
        # (path, query, client) before the logger drops it, unless the access log has no handler.
        access_log=log_level in ("info", "debug"),
        # Long-polls and SSE streams end on their own; give in-flight writes time to finish on shutdown.
        timeout_graceful_shutdown=10,
    )
    # The front door's socket gets the same backlog as the TCP listener uvicorn makes.
    door = front_door_socket(tenant.gateway_socket, config.backlog) if tenant.frontdoor.enabled else None
    if tenant.frontdoor.enabled and door is None:
        click.echo(f"warning: {tenant.gateway_socket.parent} does not exist: the front door cannot reach this "
                   "gateway until the host is deployed again", err=True)
    click.echo(f"gateway of {tenant.id} on http://{tenant.common.bind_address}:{tenant.port('gateway')}"
               + (f" and the front door's socket {tenant.gateway_socket}" if door else "")
               + f" ({tenant.gateway.workers} worker(s))", err=True)
    serve(config, [door] if door else [])
