"""The front door of the deployed default (issue 16): real Caddy, real TLS, on loopback.

Clients reach each tenant by its hostname (SNI and Host; no DNS needed) trusting the CA that
`appliance frontdoor ca` prints, as an operator's clients would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from appliance.config import HostConfig
from appliance.frontdoor.caddyfile import UPSTREAM_KEEPALIVE_S
from appliance.frontdoor.tls import DEFAULT_NAME
from tests.support.deployment import BIN, LOCAL_INVENTORY, changed_operations, deploy_or_fail, status_json
from tests.support.frontdoor import DoorClient, door_client, issue_token, printed_ca

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

ACME = "acme.appliance.internal"
GLOBEX = "globex.appliance.internal"


@pytest.fixture(scope="module")
def ca_file(deployed: HostConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return printed_ca(tmp_path_factory.mktemp("frontdoor") / "ca.pem")


@pytest.fixture
def acme_token() -> str:
    return issue_token("acme", str(uuid.uuid4()))


@pytest.fixture
def acme(deployed: HostConfig, ca_file: Path, acme_token: str) -> Iterator[DoorClient]:
    with door_client(deployed, ACME, ca_file=ca_file, token=acme_token) as door:
        yield door


def _gateway(host: HostConfig, tenant: str, token: str | None = None, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{host.tenant(tenant).port('gateway')}", headers=headers,
                        timeout=30, **kwargs)


def _thread(door: DoorClient) -> str:
    house = door.post("/api/houses", json={"name": "front door"}).json()["data"]["id"]
    return str(door.post("/api/threads", json={"house_id": house, "title": "t"}).json()["data"]["id"])


def _refusals_since(host: HostConfig, after_seq: int, count: int) -> list[str | None]:
    """`client` of acme's refused-token audit events after `after_seq`, once `count` of them are recorded (the
    gateway writes them shortly after answering)."""
    from appliance.pg import connect

    deadline = time.monotonic() + 10
    while True:
        with connect(host.tenant("acme")) as conn:
            rows = conn.execute("SELECT detail->>'client' FROM audit.events WHERE action = 'auth.token_refused' "
                                "AND seq > %s ORDER BY seq", (after_seq,)).fetchall()
        if len(rows) >= count or time.monotonic() > deadline:
            return [row[0] for row in rows]
        time.sleep(0.2)


def _last_audit_seq(host: HostConfig) -> int:
    from appliance.pg import connect

    with connect(host.tenant("acme")) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit.events").fetchone()[0])


# Routing and TLS ---------------------------------------------------------------------------------------------

def test_each_tenant_answers_at_its_own_name_with_the_printed_ca(deployed: HostConfig, ca_file: Path) -> None:
    for tenant, hostname in (("acme", ACME), ("globex", GLOBEX)):
        token = issue_token(tenant, str(uuid.uuid4()))
        with door_client(deployed, hostname, ca_file=ca_file, token=token) as door:
            health = door.get("/healthz")
            assert health.status_code == 200, health.text
            assert health.headers["strict-transport-security"] == "max-age=31536000"
            assert "server" not in health.headers
            me = door.get("/api/me")
            assert me.status_code == 200, me.text
            assert me.json()["principal_kind"] == "user"


def test_a_tenants_name_refuses_another_tenants_token(deployed: HostConfig, ca_file: Path) -> None:
    globex_token = issue_token("globex", str(uuid.uuid4()))
    with door_client(deployed, ACME, ca_file=ca_file, token=globex_token) as door:
        response = door.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def _handshake(host: HostConfig, server_name: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", host.frontdoor.https_port), timeout=10)
    return context.wrap_socket(raw, server_hostname=server_name)


def test_tls_below_1_2_is_refused(deployed: HostConfig, ca_file: Path) -> None:
    old = ssl.create_default_context(cafile=str(ca_file))
    with warnings.catch_warnings():  # the versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(deployed, ACME, old).close()
    with _handshake(deployed, ACME, ssl.create_default_context(cafile=str(ca_file))) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_an_unknown_name_gets_no_tenant_data_and_no_tenant_name(deployed: HostConfig, ca_file: Path) -> None:
    # The certificate for a name the host does not serve names no tenant either.
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with _handshake(deployed, "unknown.example.org", unverified) as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        assert names == [DEFAULT_NAME]
        tls.sendall(b"GET /api/me HTTP/1.1\r\nHost: unknown.example.org\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 421")
    for tenant in deployed.tenants:
        assert tenant.id.encode() not in answer.lower()
    # A tenant's name in SNI but another Host: still no tenant behind it.
    with door_client(deployed, ACME, ca_file=ca_file) as door:
        misdirected = door.get("/healthz", headers={"Host": "unknown.example.org"})
    assert misdirected.status_code == 421 and b"acme" not in misdirected.content
    # Plain HTTP: a tenant's name is redirected to HTTPS, anything else refused.
    plain = f"http://127.0.0.1:{deployed.frontdoor.http_port}"
    redirect = httpx.get(plain + "/api/me?x=1", headers={"Host": ACME}, timeout=10)
    assert redirect.status_code == 308 and redirect.headers["location"] == f"https://{ACME}/api/me?x=1"
    unknown = httpx.get(plain + "/", headers={"Host": "unknown.example.org"}, timeout=10)
    assert unknown.status_code == 421 and b"acme" not in unknown.content and b"globex" not in unknown.content


def test_an_oversized_body_is_refused_at_the_edge(acme: DoorClient, deployed: HostConfig) -> None:
    limit = deployed.tenant("acme").gateway.max_body_bytes
    def chunks() -> Iterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    # Chunked (no declared length): the gateway refuses it as it grows past the limit, with its own 413.
    chunked = acme.post("/api/houses", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    for _ in range(5):  # refused by the edge itself, every time (no race with the gateway's own check)
        response = acme.post("/api/houses", content=b"x" * (limit + 1), headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "payload_too_large"


# Client addresses ----------------------------------------------------------------------------------------------

def test_a_spoofed_forwarded_for_counts_only_through_the_front_door(deployed: HostConfig, ca_file: Path) -> None:
    spoof = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer not-a-token"}
    before = _last_audit_seq(deployed)
    with _gateway(deployed, "acme") as direct:
        assert direct.get("/api/me", headers=spoof).status_code == 401
    with door_client(deployed, ACME, ca_file=ca_file, source="127.0.0.5") as door:
        assert door.get("/api/me", headers=spoof).status_code == 401
    # Straight to the gateway the header is ignored; through the door the audit has the real client.
    assert _refusals_since(deployed, before, 2) == ["127.0.0.1", "127.0.0.5"]


def test_a_forwarded_for_from_the_gateways_own_user_on_the_socket_is_not_believed(deployed: HostConfig) -> None:
    # Only the front door's group and the gateway's own user enter the socket's directory (the tenant's other
    # processes do not), and of those only the front door's user is believed.
    acme = deployed.tenant("acme")
    outside = subprocess.run(["runuser", "-u", acme.user, "--", "ls", str(acme.gateway_socket.parent)],
                             capture_output=True, text=True)
    assert outside.returncode != 0 and "Permission denied" in outside.stderr
    request = ("GET /api/me HTTP/1.1\\r\\nHost: acme\\r\\nAuthorization: Bearer forged\\r\\n"
               "X-Forwarded-For: 203.0.113.77\\r\\nConnection: close\\r\\n\\r\\n")
    probe = (f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(acme.gateway_socket)!r}); "
             f"s.sendall(b'{request}'); print(s.recv(100))")
    before = _last_audit_seq(deployed)
    sent = subprocess.run(["runuser", "-u", acme.gateway_user, "--", "python3", "-c", probe], capture_output=True,
                          text=True, timeout=30)
    assert sent.returncode == 0 and "401" in sent.stdout, sent.stderr
    # Recorded with no client address at all (not the forged one, not the front door's).
    assert _refusals_since(deployed, before, 1) == ["unknown"]


def test_the_anonymous_rate_limit_is_per_real_client_through_the_front_door(deployed: HostConfig,
                                                                            ca_file: Path) -> None:
    with door_client(deployed, ACME, ca_file=ca_file, source="127.0.0.6") as noisy:
        answers = [noisy.get("/api/me").status_code for _ in range(60)]
    assert answers[0] == 401 and 429 in answers, answers
    with door_client(deployed, ACME, ca_file=ca_file, source="127.0.0.7") as quiet:
        assert quiet.get("/api/me").status_code == 401


# Live reads pass through unbuffered ----------------------------------------------------------------------------

def _next_offset(door: DoorClient, thread: str) -> str:
    response = door.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})
    assert response.status_code == 200, response.text
    return response.headers["stream-next-offset"]


def test_a_thread_tail_over_sse_delivers_an_append_within_100_ms(acme: DoorClient) -> None:
    thread = _thread(acme)
    offset = _next_offset(acme, thread)
    delays = []
    with acme.stream("GET", f"/api/threads/{thread}/stream", params={"offset": offset, "live": "sse"}) as tail:
        assert tail.status_code == 200 and tail.headers["content-type"].startswith("text/event-stream")
        lines = tail.iter_lines()
        for attempt in range(3):
            marker = f"sse-{attempt}-{uuid.uuid4()}"
            appended = acme.post(f"/api/threads/{thread}/entries", json={"id": str(uuid.uuid4()), "text": marker})
            assert appended.status_code == 201, appended.text
            sent = time.perf_counter()
            for line in lines:
                if marker in line:
                    delays.append(time.perf_counter() - sent)
                    break
    assert min(delays) < 0.1, delays


def test_a_thread_long_poll_delivers_an_append_within_100_ms(acme: DoorClient, deployed: HostConfig,
                                                             acme_token: str) -> None:
    thread = _thread(acme)
    offset = _next_offset(acme, thread)
    result: dict[str, Any] = {}

    def poll() -> None:
        response = acme.get(f"/api/threads/{thread}/stream", params={"offset": offset, "live": "long-poll"})
        result["at"] = time.perf_counter()
        result["response"] = response

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)  # the long-poll is waiting at the tip
    # A second connection with the same token: the first is held by the waiting long-poll.
    with door_client(deployed, ACME, token=acme_token) as writer:
        assert writer.post(f"/api/threads/{thread}/entries",
                           json={"id": str(uuid.uuid4()), "text": "lp"}).status_code == 201
        sent = time.perf_counter()
    waiter.join(30)
    response = result["response"]
    assert response.status_code == 200 and "lp" in response.text
    assert result["at"] - sent < 0.1, result["at"] - sent


def test_the_official_electric_client_syncs_a_shape_through_the_front_door(acme: DoorClient, ca_file: Path,
                                                                          acme_token: str, tmp_path: Path) -> None:
    from tests.support.sync import PROTOCOL_DIR, require_node_modules

    require_node_modules()
    house = acme.post("/api/houses", json={"name": "electric through the door"}).json()["data"]["id"]
    result = subprocess.run(
        _with_hosts_file({ACME: "127.0.0.1"}, tmp_path, ["node", str(PROTOCOL_DIR / "gateway_shape_rows.mjs")]),
        capture_output=True, text=True, timeout=60,
        # Node trusts the front door CA as a client installing `appliance frontdoor ca` would.
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file), "SHAPE_URL": f"https://{ACME}/api/shapes/houses",
             "TOKEN": acme_token},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert [row["id"] for row in rows] == [house]


def _with_hosts_file(names: dict[str, str], tmp_path: Path, argv: list[str]) -> list[str]:
    """`argv` in a private mount namespace whose /etc/hosts maps `names` (this machine's stays untouched)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + "".join(f"{a} {n}\n" for n, a in names.items()))
    script = f'mount --bind {hosts} /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *argv]


# What the host exposes -------------------------------------------------------------------------------------------

def test_host_json_is_roots_and_each_tenant_reads_only_its_own_view(deployed: HostConfig) -> None:
    mode = deployed.host_file.stat()
    assert mode.st_mode & 0o777 == 0o640 and mode.st_uid == 0 and mode.st_gid == 0
    for tenant in deployed.tenants:
        other = next(t for t in deployed.tenants if t.id != tenant.id)
        as_tenant = ["runuser", "-u", tenant.user, "--", "cat"]
        assert subprocess.run([*as_tenant, str(deployed.host_file)], capture_output=True).returncode != 0
        own = subprocess.run([*as_tenant, str(tenant.config_file)], capture_output=True, text=True)
        assert own.returncode == 0 and other.id not in json.loads(own.stdout)["tenants"][0]["id"]
        assert other.id not in {t["id"] for t in json.loads(own.stdout)["tenants"]}
        assert subprocess.run([*as_tenant, str(other.config_file)], capture_output=True).returncode != 0


def test_the_front_door_log_is_roots_and_holds_no_credentials(deployed: HostConfig, acme_token: str) -> None:
    from appliance.frontdoor.service import frontdoor_log

    log = frontdoor_log(deployed)
    assert log.parent.stat().st_mode & 0o777 == 0o700 and log.parent.stat().st_uid == 0
    for tenant in deployed.tenants:
        assert subprocess.run(["runuser", "-u", tenant.user, "--", "cat", str(log)], capture_output=True
                              ).returncode != 0
    # An error Caddy logs with the request's headers: acme's gateway socket out of reach for one request.
    socket_path = deployed.tenant("acme").gateway_socket
    hidden = socket_path.with_name("gateway.sock.hidden")
    socket_path.rename(hidden)
    try:
        time.sleep(UPSTREAM_KEEPALIVE_S + 0.5)  # until Caddy has dropped its idle connection and must dial again
        with door_client(deployed, ACME, token=acme_token) as door:
            assert door.get("/api/me").status_code == 502
    finally:
        hidden.rename(socket_path)
    deadline = time.monotonic() + 5
    while '"Authorization":[]' not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert '"Authorization":[]' in text  # the request was logged, its credential redacted
    assert acme_token not in text


def test_a_non_loopback_bind_address_is_refused_naming_the_setting(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    exposed = '"objectstore": {"mode": "embedded"}, "common": {"bind_address": "0.0.0.0"},'
    inventory.write_text(LOCAL_INVENTORY.read_text().replace('"objectstore": {"mode": "embedded"},', exposed))
    result = subprocess.run([str(BIN / "appliance"), "inventory", "check", str(inventory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "bind_address" in result.stderr and "front door" in result.stderr


def _connects_as(user: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
    return subprocess.run(["runuser", "-u", user, "--", "python3", "-c", probe], capture_output=True,
                          timeout=30).returncode == 0


def test_the_front_doors_user_reaches_gateways_and_nothing_else(deployed: HostConfig) -> None:
    user = deployed.frontdoor_user
    for tenant in deployed.tenants:
        assert _connects_as(user, tenant.port("gateway")), tenant.id
        for component in ("postgres", "sync", "streams", "agents"):
            assert not _connects_as(user, tenant.port(component)), (tenant.id, component)
        # Nor can it read a tenant's files.
        assert subprocess.run(["runuser", "-u", user, "--", "ls", str(tenant.secrets_dir)],
                              capture_output=True).returncode != 0
    if deployed.runs_objectstore:
        assert not _connects_as(user, deployed.objectstore.s3_port)


def test_a_tenant_cannot_reach_another_tenants_front_door_socket(deployed: HostConfig) -> None:
    acme, globex = deployed.tenant("acme"), deployed.tenant("globex")
    probe = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(acme.gateway_socket)!r})"
    refused = subprocess.run(["runuser", "-u", globex.user, "--", "python3", "-c", probe], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused.stderr


def test_status_shows_the_front_door_and_each_tenants_url(deployed: HostConfig) -> None:
    code, report = status_json()
    assert code == 0
    door = report["host"]["components"]["frontdoor"]
    assert door["healthy"] and door["pid"], door
    assert door["listeners"] == [f"https://127.0.0.1:{deployed.frontdoor.https_port}",
                                 f"http://127.0.0.1:{deployed.frontdoor.http_port}"]
    for tenant in deployed.tenants:
        assert report["tenants"][tenant.id]["url"] == f"https://{tenant.id}.appliance.internal"
        assert door["certificates"][tenant.id]["days_left"] > 300
        assert door["certificates"][tenant.id]["names"] == list(tenant.hostnames)


# Renewal ---------------------------------------------------------------------------------------------------------

def _expiring_certificate(host: HostConfig, tenant_id: str, days: int) -> None:
    """Re-sign the tenant's certificate (same key, same CA) so that it expires in `days`."""
    from cryptography.hazmat.primitives import hashes, serialization

    cert_path, key_path = host.frontdoor_cert(host.tenant(tenant_id))
    current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(host.frontdoor_ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(host.frontdoor_ca_cert.read_bytes())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.subject)
               .public_key(current.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    soon = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    stat = cert_path.stat()
    cert_path.write_bytes(soon.public_bytes(serialization.Encoding.PEM))
    os.chown(cert_path, stat.st_uid, stat.st_gid)
    del key_path


def _served_not_after(host: HostConfig, ca_file: Path, hostname: str) -> dt.datetime:
    with _handshake(host, hostname, ssl.create_default_context(cafile=str(ca_file))) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"").not_valid_after_utc


def test_a_certificate_in_its_renewal_window_is_replaced_without_dropping_a_long_poll(
        deployed: HostConfig, ca_file: Path, acme: DoorClient) -> None:
    # Caddy keeps serving the certificate it loaded; the deploy must notice the file's expiry on its own.
    _expiring_certificate(deployed, "acme", days=5)
    _, before = status_json()
    door_pid = before["host"]["components"]["frontdoor"]["pid"]
    thread = _thread(acme)
    offset = _next_offset(acme, thread)
    result: dict[str, Any] = {}

    def poll() -> None:
        try:
            result["response"] = acme.get(f"/api/threads/{thread}/stream",
                                          params={"offset": offset, "live": "long-poll"})
        except httpx.HTTPError as exc:
            result["error"] = exc

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    started = time.monotonic()
    output = deploy_or_fail()
    # The reload happens near the end of the deploy: the long-poll was still open then only if the deploy took
    # less than a long-poll lasts (otherwise this test would prove nothing).
    assert time.monotonic() - started < deployed.tenant("acme").streams.long_poll_timeout_ms / 1000 - 1
    assert "Reload the front door" in output
    waiter.join(60)
    # The long-poll open across the reload ended as a long-poll ends (its data, or its timeout), not cut off.
    assert "error" not in result, result.get("error")
    assert result["response"].status_code in (200, 204), result["response"].text
    _, after = status_json()
    assert after["host"]["components"]["frontdoor"]["pid"] == door_pid  # reloaded, not restarted
    remaining = _served_not_after(deployed, ca_file, ACME) - dt.datetime.now(dt.UTC)
    assert remaining > dt.timedelta(days=300), remaining
    assert after["host"]["components"]["frontdoor"]["certificates"]["acme"]["days_left"] > 300


def test_a_front_door_switched_off_stops_publishing_and_comes_back(deployed: HostConfig, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text(LOCAL_INVENTORY.read_text().replace(
        '"frontdoor": {"bind_address": "127.0.0.1"},', '"frontdoor": {"bind_address": "127.0.0.1", "enabled": False},'))
    from appliance.frontdoor.caddyfile import caddyfile_path

    try:
        deploy_or_fail(inventory)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", deployed.frontdoor.https_port), timeout=5).close()
        assert not caddyfile_path(deployed).exists()
        assert not any(t.gateway_socket.parent.exists() for t in deployed.tenants)
        assert deployed.frontdoor_ca_cert.exists()  # clients that installed it trust a front door enabled again
        code, report = status_json()
        assert code == 0 and "frontdoor" not in report["host"]["components"]
        assert all("url" not in t for t in report["tenants"].values())
        # The gateways still answer on loopback.
        with _gateway(deployed, "acme") as direct:
            assert direct.get("/healthz").status_code == 200
        assert changed_operations(deploy_or_fail(inventory)) == 0  # and that is idempotent
    finally:
        deploy_or_fail()
    code, report = status_json()
    assert code == 0 and report["host"]["components"]["frontdoor"]["healthy"]
