"""A tenant on `tls: acme` gets its certificate from an ACME server on its own, through Caddy (issue 16).

No public ACME CA is reachable here, so the test runs one: Caddy's own `acme_server` in a network namespace the
test creates, reached over a veth pair, as an organization's private ACME CA would be (`frontdoor.acme_ca`,
`frontdoor.acme_ca_root`). The front door listens on the host end of the pair for the ACME server's
challenges; nothing is bound beyond this machine and that namespace. The default is deployed again after.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from appliance.config import HostConfig, load_host_config
from tests.support.deployment import LOCAL_INVENTORY, deploy_or_fail, status_json

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

NETNS = "apfdacme"
HOST_SIDE, ACME_SIDE = "10.201.7.1", "10.201.7.2"
ACME_PORT = 14443
GLOBEX = "globex.appliance.internal"
ACME_CADDYFILE = """{
	admin off
	storage file_system %(data)s
	skip_install_trust
	http_port 14080
	https_port %(port)d
	pki {
		ca local {
			name "appliance test ACME"
		}
	}
}
https://%(address)s:%(port)d {
	tls internal
	acme_server
}
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _forget_test_acme_accounts(host: HostConfig) -> None:
    """What Caddy keeps in its storage from this test's ACME server (a new CA each run): an account and the
    certificate, which a later run would otherwise find and serve, signed by a CA that no longer exists."""
    key = f"{ACME_SIDE}-{ACME_PORT}-acme-local-directory"
    for kind in ("certificates", "acme"):
        shutil.rmtree(host.frontdoor_root / "data" / kind / key, ignore_errors=True)


@pytest.fixture(scope="module")
def acme_server(deployed: HostConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    _forget_test_acme_accounts(deployed)
    work = tmp_path_factory.mktemp("acme")
    netns_etc = Path("/etc/netns") / NETNS
    process: subprocess.Popen[bytes] | None = None
    _run("ip", "netns", "add", NETNS)
    try:
        _run("ip", "link", "add", f"{NETNS}0", "type", "veth", "peer", "name", f"{NETNS}1")
        _run("ip", "link", "set", f"{NETNS}1", "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_SIDE}/30", "dev", f"{NETNS}0")
        _run("ip", "link", "set", f"{NETNS}0", "up")
        _run("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{ACME_SIDE}/30", "dev", f"{NETNS}1")
        _run("ip", "netns", "exec", NETNS, "ip", "link", "set", f"{NETNS}1", "up")
        _run("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        # `ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts: the ACME server finds the tenant's
        # name at the front door's address, as DNS would tell a real one.
        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "hosts").write_text(f"127.0.0.1 localhost\n{HOST_SIDE} {GLOBEX}\n")
        caddyfile = work / "Caddyfile"
        caddyfile.write_text(ACME_CADDYFILE % {"data": work / "data", "port": ACME_PORT, "address": ACME_SIDE})
        log = open(work / "acme.log", "wb")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(["ip", "netns", "exec", NETNS, "caddy", "run", "--config", str(caddyfile),
                                    "--adapter", "caddyfile"], stdout=log, stderr=subprocess.STDOUT)
        root = work / "data" / "pki" / "authorities" / "local" / "root.crt"
        deadline = time.monotonic() + 30
        while not root.is_file():
            assert time.monotonic() < deadline and process.poll() is None, (work / "acme.log").read_text()
            time.sleep(0.2)
        # The front door's user reads the root it is told to trust (the operator puts it somewhere readable).
        published = Path("/var/tmp/appliance-tests/acme-test-root.pem")
        published.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root, published)
        published.chmod(0o644)
        yield {"directory": f"https://{ACME_SIDE}:{ACME_PORT}/acme/local/directory", "root": published,
               "log": work / "acme.log"}
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        _forget_test_acme_accounts(deployed)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{NETNS}0"], capture_output=True)
        shutil.rmtree(netns_etc, ignore_errors=True)


@pytest.fixture(scope="module")
def on_acme(acme_server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostConfig]:
    inventory = tmp_path_factory.mktemp("acme-inventory") / "inventory.py"
    door = (f'"frontdoor": {{"bind_address": "{HOST_SIDE}", "acme_ca": "{acme_server["directory"]}", '
            f'"acme_ca_root": "{acme_server["root"]}", "acme_email": "ops@appliance.internal"}},')
    source = LOCAL_INVENTORY.read_text()
    assert '"frontdoor": {"bind_address": "127.0.0.1"},' in source
    inventory.write_text(source.replace('"frontdoor": {"bind_address": "127.0.0.1"},', door).replace(
        '"globex": {"slot": 2},', '"globex": {"slot": 2, "frontdoor": {"tls": "acme"}},'))
    try:
        deploy_or_fail(inventory)
        yield load_host_config()
    finally:
        deploy_or_fail()


def _served(host: HostConfig, context: ssl.SSLContext) -> x509.Certificate:
    import socket

    with socket.create_connection((HOST_SIDE, host.frontdoor.https_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=GLOBEX) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")


def test_a_tenant_on_acme_is_served_a_certificate_from_the_acme_server(on_acme: HostConfig,
                                                                      acme_server: dict[str, Any]) -> None:
    trusting_acme = ssl.create_default_context(cafile=str(acme_server["root"]))
    # The deploy waited until the door answered for every tenant, so the certificate is already there.
    served = _served(on_acme, trusting_acme)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [GLOBEX]
    assert "appliance test ACME" in served.issuer.rfc4514_string()
    code, report = status_json()
    assert code == 0, report["host"]["components"]["frontdoor"]["detail"]
    assert report["host"]["components"]["frontdoor"]["certificates"]["globex"]["not_after"] is None  # Caddy's


def test_the_other_tenant_stays_on_the_front_door_ca(on_acme: HostConfig) -> None:
    import socket

    context = ssl.create_default_context(cafile=str(on_acme.frontdoor_ca_cert))
    with socket.create_connection((HOST_SIDE, on_acme.frontdoor.https_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="acme.appliance.internal") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
