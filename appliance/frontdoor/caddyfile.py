"""The front door's Caddyfile, rendered from the host config (roles/frontdoor/templates/Caddyfile.j2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance import roles
from appliance.config import HostConfig, TenantConfig
from appliance.frontdoor.tls import DEFAULT_NAME
from appliance.identity.provider import IDENTITY_MAX_BODY_BYTES, IDP_PATH
from appliance.identity.provider import socket_path as identity_socket

# Added to the longest time a live request is held open upstream before the edge gives up on it.
EDGE_TIMEOUT_MARGIN_S = 30
# A host or tenant name the front door does not serve: Misdirected Request, naming nothing.
UNKNOWN_HOST_STATUS = 421
# Below uvicorn's keep-alive timeout (5 s): idle upstream connections close on the front door's side first.
UPSTREAM_KEEPALIVE_S = 4
# The edge's hard cap on a chunked body, above the gateway's own limit so the gateway refuses first (a 413).
CHUNKED_BODY_MARGIN_BYTES = 64 * 1024


# Not world-readable: it names every tenant's hostnames and sockets. Root writes it, the front door reads it.
CADDYFILE_MODE = 0o640


def caddyfile_path(host: HostConfig) -> Path:
    return host.frontdoor_conf_dir / "Caddyfile"


def write_caddyfile(host: HostConfig) -> None:
    """The Caddyfile for `host`, outside a deploy (which manages the same file, mode and group itself)."""
    import grp

    from appliance.objectstore.files import write_atomic

    owner = (0, grp.getgrnam(host.frontdoor_user).gr_gid)
    write_atomic(caddyfile_path(host), render_caddyfile(host).encode(), CADDYFILE_MODE, owner)


def grace_period_s(host: HostConfig) -> int:
    """How long a reload or stop lets requests in flight finish: the longest a long-poll may be held."""
    return max((edge_read_timeout_s(t) for t in host.tenants), default=EDGE_TIMEOUT_MARGIN_S)


def edge_read_timeout_s(tenant: TenantConfig) -> int:
    """Longer than the gateway may take to begin an answer: a long-poll of the sync engine or of the streams
    server ends (and only then sends its headers) within its timeout."""
    held_ms = max(tenant.sync.long_poll_timeout_ms, tenant.streams.long_poll_timeout_ms)
    return -(-held_ms // 1000) + EDGE_TIMEOUT_MARGIN_S


def _site(host: HostConfig, tenant: TenantConfig) -> dict[str, Any]:
    cert, key = host.frontdoor_cert(tenant)
    return {
        "tenant": tenant.id,
        "hostnames": list(tenant.hostnames),
        "tls": tenant.frontdoor.tls.value,
        "cert_file": str(cert),
        "key_file": str(key),
        "socket": str(tenant.gateway_socket),
        "max_body_bytes": tenant.gateway.max_body_bytes,
        "body_cap_bytes": tenant.gateway.max_body_bytes + CHUNKED_BODY_MARGIN_BYTES,
        "read_timeout_s": edge_read_timeout_s(tenant),
        # The embedded OIDC provider, where the tenant runs one (appliance.identity.provider).
        "identity_socket": str(identity_socket(tenant)) if tenant.identity.embedded else "",
        "identity_path": IDP_PATH,
        "identity_max_body_bytes": IDENTITY_MAX_BODY_BYTES,
    }


def render_caddyfile(host: HostConfig) -> str:
    door = host.frontdoor
    default_cert, default_key = host.frontdoor_default_cert
    return roles.render(
        "frontdoor", "Caddyfile.j2",
        admin_socket=str(host.frontdoor_admin_socket),
        data_dir=str(host.frontdoor_root / "data"),
        default_name=DEFAULT_NAME,
        default_cert=str(default_cert),
        default_key=str(default_key),
        http_port=door.http_port,
        https_port=door.https_port,
        https_suffix="" if door.https_port == 443 else f":{door.https_port}",
        bind_address=door.bind_address,
        acme_email=door.acme_email,
        acme_ca=door.acme_ca,
        acme_ca_root=door.acme_ca_root,
        idle_timeout_s=door.idle_timeout_s,
        grace_period_s=grace_period_s(host),
        hsts_max_age_s=door.hsts_max_age_s,
        unknown_status=UNKNOWN_HOST_STATUS,
        upstream_keepalive_s=UPSTREAM_KEEPALIVE_S,
        sites=[_site(host, tenant) for tenant in host.tenants],
    )
