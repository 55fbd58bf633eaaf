"""The front door's health for `appliance status`: every tenant's hostname answers over TLS through the
listener, with a certificate the client side trusts, and the gateway behind it answers /healthz."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from appliance.config import FrontdoorTls, HostConfig, TenantConfig
from appliance.frontdoor.tls import served_certificates

PROBE_TIMEOUT_S = 3.0


@dataclass
class FrontdoorHealth:
    healthy: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)


def connect_address(host: HostConfig) -> str:
    """Where a client on this host reaches the listener (a wildcard bind is reached on loopback)."""
    address = host.frontdoor.bind_address
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)


def client_context(host: HostConfig, tenant: TenantConfig) -> ssl.SSLContext:
    """What a client trusts for `tenant`: the front door CA for internal certificates, the system's otherwise."""
    if tenant.frontdoor.tls is FrontdoorTls.internal:
        return ssl.create_default_context(cafile=str(host.frontdoor_ca_cert))
    return ssl.create_default_context()


def https_get(host: HostConfig, hostname: str, path: str, context: ssl.SSLContext) -> tuple[int, str]:
    """(status, TLS version) of GET https://<hostname><path> through this host's listener."""
    address = (connect_address(host), host.frontdoor.https_port)
    with socket.create_connection(address, timeout=PROBE_TIMEOUT_S) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        status_line = tls.recv(256).split(b"\r\n", 1)[0].decode("latin1")
        return int(status_line.split()[1]), str(tls.version())


def probe_frontdoor(host: HostConfig) -> FrontdoorHealth:
    problems: list[str] = []
    answering: list[str] = []
    for tenant in host.tenants:
        for hostname in tenant.hostnames:
            try:
                status, version = https_get(host, hostname, "/healthz", client_context(host, tenant))
            except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
                problems.append(f"{hostname}: {exc}")
                continue
            if status != 200:
                problems.append(f"{hostname}: /healthz answered {status} through the front door")
            else:
                answering.append(f"{hostname} ({version})")
    now = dt.datetime.now(dt.UTC)
    certificates = {}
    for served in served_certificates(host):
        days = None if served.not_after is None else (served.not_after - now).days
        certificates[served.tenant] = {
            "names": list(served.names),
            "not_after": served.not_after.isoformat() if served.not_after else None,
            "days_left": days,
        }
    listeners = [f"https://{host.frontdoor.bind_address}:{host.frontdoor.https_port}",
                 f"http://{host.frontdoor.bind_address}:{host.frontdoor.http_port}"]
    soonest = min((c["days_left"] for c in certificates.values() if c["days_left"] is not None), default=None)
    expiry = f"; certificates expire in {soonest}+ days" if soonest is not None else ""
    if problems:
        return FrontdoorHealth(False, "; ".join(problems), {"listeners": listeners, "certificates": certificates})
    detail = f"{', '.join(listeners)}: {', '.join(answering) or 'no tenants'}{expiry}"
    return FrontdoorHealth(True, detail, {"listeners": listeners, "certificates": certificates})
