"""Reaching a deployed host's front door as a client elsewhere would: by the tenant's hostname over TLS, trusting
the CA `appliance frontdoor ca` prints, without DNS (the name is sent as SNI and Host; the connection goes to
the listener's address), optionally from a chosen loopback source address (127.0.0.0/8 is all this machine's),
so a test can tell the front door's idea of the client from the gateway's.

    with door_client(host, "acme", source="127.0.0.5") as door:
        door.get("/healthz")
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from appliance.config import HostConfig
from appliance.frontdoor.status import connect_address
from tests.support.deployment import BIN


def printed_ca(path: Path) -> Path:
    """The CA certificate as the operator gets it: `appliance frontdoor ca`, written to `path`."""
    pem = subprocess.run([str(BIN / "appliance"), "frontdoor", "ca"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    path.write_text(pem)
    return path


class DoorClient:
    """An httpx client for one hostname through the front door (every request carries the SNI name)."""

    def __init__(self, client: httpx.Client, hostname: str) -> None:
        self.client = client
        self.hostname = hostname

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        extensions = {"sni_hostname": self.hostname, **kwargs.pop("extensions", {})}
        return self.client.request(method, path, extensions=extensions, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        extensions = {"sni_hostname": self.hostname, **kwargs.pop("extensions", {})}
        with self.client.stream(method, path, extensions=extensions, **kwargs) as response:
            yield response


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()


@contextmanager
def door_client(host: HostConfig, hostname: str, *, ca_file: Path | None = None, source: str = "127.0.0.1",
                token: str | None = None, timeout: float = 30.0) -> Iterator[DoorClient]:
    """`hostname` through `host`'s front door; `ca_file` defaults to the front door CA on this host."""
    context = tls_context(ca_file or host.frontdoor_ca_cert)
    headers = {"Host": hostname, **({"Authorization": f"Bearer {token}"} if token else {})}
    base = f"https://{connect_address(host)}:{host.frontdoor.https_port}"
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    with httpx.Client(base_url=base, headers=headers, transport=transport, timeout=timeout) as client:
        yield DoorClient(client, hostname)


def issue_token(tenant_id: str, subject: str) -> str:
    return subprocess.run([str(BIN / "appliance"), "token", "issue", tenant_id, "--subject", subject],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
