"""The front door's health for `appliance status`: every tenant's hostname answers over TLS through the
listener, with a certificate the client side trusts, and the gateway behind it answers /healthz."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.config import FrontdoorTls, HostConfig, TenantConfig
from appliance.frontdoor.tls import served_certificates

PROBE_TIMEOUT_S = 3.0


def connect_address(host: HostConfig) -> str:
    """Where a client on this host reaches the listener (a wildcard bind is reached on loopback)."""
    address = host.frontdoor.bind_address
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)


def client_context(host: HostConfig, tenant: TenantConfig) -> tuple[ssl.SSLContext, bytes | None]:
    """How the probe checks what `tenant`'s name serves: (context, the exact certificate expected, if any).

    Internal certificates are verified as a client would, against the front door CA. The operator's files are
    compared with what was installed, byte for byte: their CA is the operator's business and need not be in
    this host's trust store. ACME certificates are verified against the system's trust store, as browsers do,
    and the private ACME CA's root where one is configured (its clients are told to trust it)."""
    if tenant.frontdoor.tls is FrontdoorTls.internal:
        return ssl.create_default_context(cafile=str(host.frontdoor_ca_cert)), None
    if tenant.frontdoor.tls is FrontdoorTls.files:
        installed = x509.load_pem_x509_certificate(host.frontdoor_cert(tenant)[0].read_bytes())
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        return unverified, installed.public_bytes(serialization.Encoding.DER)
    context = ssl.create_default_context()
    if host.frontdoor.acme_ca_root:
        context.load_verify_locations(cafile=host.frontdoor.acme_ca_root)
    return context, None


def https_get(host: HostConfig, hostname: str, path: str, context: ssl.SSLContext,
              expected_der: bytes | None = None) -> tuple[int, str]:
    """(status, TLS version) of GET https://<hostname><path> through this host's listener."""
    address = (connect_address(host), host.frontdoor.https_port)
    with socket.create_connection(address, timeout=PROBE_TIMEOUT_S) as raw, \
            context.wrap_socket(raw, server_hostname=hostname) as tls:
        if expected_der is not None and tls.getpeercert(binary_form=True) != expected_der:
            raise ValueError("serves another certificate than the one installed for it")
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
        status_line = tls.recv(256).split(b"\r\n", 1)[0].decode("latin1")
        return int(status_line.split()[1]), str(tls.version())


def frontdoor_details(host: HostConfig) -> dict[str, Any]:
    """Its listeners and each tenant's certificate (names, expiry), from the config and the files: no network."""
    now = dt.datetime.now(dt.UTC)
    certificates = {}
    for served in served_certificates(host):
        certificates[served.tenant] = {
            "names": list(served.names),
            "not_after": served.not_after.isoformat() if served.not_after else None,
            "days_left": None if served.not_after is None else (served.not_after - now).days,
        }
    listeners = [f"https://{host.frontdoor.bind_address}:{host.frontdoor.https_port}",
                 f"http://{host.frontdoor.bind_address}:{host.frontdoor.http_port}"]
    return {"listeners": listeners, "certificates": certificates}


def probe_frontdoor(host: HostConfig) -> tuple[bool, str]:
    """(healthy, detail): every tenant's hostname answers /healthz through the listener over TLS."""
    problems: list[str] = []
    answering: list[str] = []
    for tenant in host.tenants:
        for hostname in tenant.hostnames:
            try:
                context, expected = client_context(host, tenant)
                status, version = https_get(host, hostname, "/healthz", context, expected)
            except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
                problems.append(f"{hostname}: {exc}")
                continue
            if status != 200:
                problems.append(f"{hostname}: /healthz answered {status} through the front door")
            else:
                answering.append(f"{hostname} ({version})")
    if problems:
        return False, "; ".join(problems)
    details = frontdoor_details(host)
    days = [c["days_left"] for c in details["certificates"].values() if c["days_left"] is not None]
    expiry = f"; certificates expire in {min(days)}+ days" if days else ""
    return True, f"{', '.join(details['listeners'])}: {', '.join(answering) or 'no tenants'}{expiry}"
