"""Front door settings that the embedded default leaves off (issue 16), on a deploy that turns them on and is
put back afterwards: CORS for a browser app on another origin (the official Electric client in headless
Chromium), and a tenant served with the operator's own certificate files.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import HostConfig, load_host_config
from tests.support.browser import chromium
from tests.support.deployment import BIN, LOCAL_INVENTORY, deploy_or_fail
from tests.support.frontdoor import door_client, issue_token, printed_ca
from tests.support.sync import PROTOCOL_DIR, require_node_modules

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

ACME = "acme.appliance.internal"
GLOBEX = "globex.appliance.internal"
APP_ORIGIN = "https://app.acme.test"
OTHER_ORIGIN = "https://elsewhere.test"


def _operator_certificate(directory: Path, hostname: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) as an operator's own PKI would hand them over, for `hostname`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "operator-ca.pem", directory / "globex.pem", directory / "globex.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def configured(deployed: HostConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("frontdoor-settings")
    work.chmod(0o700)
    operator_ca, cert, key = _operator_certificate(work, GLOBEX)
    inventory = work / "inventory.py"
    inventory.write_text(LOCAL_INVENTORY.read_text().replace(
        '"acme": {"slot": 1},', f'"acme": {{"slot": 1, "gateway": {{"cors_origins": ["{APP_ORIGIN}"]}}}},'
    ).replace(
        '"globex": {"slot": 2},',
        f'"globex": {{"slot": 2, "frontdoor": {{"tls": "files", "cert_file": "{cert}", "key_file": "{key}"}}}},'
    ))
    assert APP_ORIGIN in inventory.read_text() and str(cert) in inventory.read_text()
    try:
        deploy_or_fail(inventory)
        yield {"host": load_host_config(), "operator_ca": operator_ca, "ca": printed_ca(work / "ca.pem"),
               "work": work}
    finally:
        deploy_or_fail()


def test_a_tenant_is_served_with_the_operators_certificate(configured: dict[str, Any]) -> None:
    host = configured["host"]
    token = issue_token("globex", str(uuid.uuid4()))
    # Trusting only the operator's CA (not the front door's) works for globex...
    with door_client(host, GLOBEX, ca_file=configured["operator_ca"], token=token) as door:
        assert door.get("/api/me").status_code == 200
    # ...and acme is still on the front door's own CA.
    with door_client(host, ACME, ca_file=configured["ca"]) as door:
        assert door.get("/healthz").status_code == 200
    with pytest.raises(httpx.ConnectError), door_client(host, ACME, ca_file=configured["operator_ca"]) as door:
        door.get("/healthz")


def test_a_bad_operator_certificate_stops_the_deploy_naming_the_file(configured: dict[str, Any]) -> None:
    work: Path = configured["work"]
    (work / "wrong").mkdir(exist_ok=True)
    wrong = _operator_certificate(work / "wrong", "not-globex.example.com")
    inventory = work / "bad.py"
    inventory.write_text((work / "inventory.py").read_text().replace(str(work / "globex.pem"), str(wrong[1]))
                         .replace(str(work / "globex.key"), str(wrong[2])))
    result = subprocess.run([str(BIN / "pyinfra"), "-y", str(inventory), "deploy.py"], capture_output=True,
                            text=True, timeout=600, cwd=LOCAL_INVENTORY.parents[1])
    assert result.returncode != 0
    assert f"{wrong[1]} does not name ['{GLOBEX}']" in result.stdout + result.stderr
    # Nothing was changed for globex: its door still serves the operator's good certificate.
    with door_client(configured["host"], GLOBEX, ca_file=configured["operator_ca"]) as door:
        assert door.get("/healthz").status_code == 200


def test_cors_preflight_and_exposed_headers_for_an_allowed_origin(configured: dict[str, Any]) -> None:
    token = issue_token("acme", str(uuid.uuid4()))
    with door_client(configured["host"], ACME, ca_file=configured["ca"]) as door:
        preflight = door.request("OPTIONS", "/api/shapes/houses", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        shape = door.get("/api/shapes/houses", params={"offset": "-1"},
                         headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {token}"})
        assert shape.status_code == 200
        assert shape.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = {h.strip() for h in shape.headers["access-control-expose-headers"].lower().split(",")}
        assert {"electric-handle", "electric-offset", "electric-schema", "electric-cursor",
                "electric-up-to-date"} <= exposed
        refused = door.request("OPTIONS", "/api/shapes/houses", headers={
            "Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        other = door.get("/healthz", headers={"Origin": OTHER_ORIGIN})
        assert "access-control-allow-origin" not in other.headers
    # globex allows no origin at all.
    with door_client(configured["host"], GLOBEX, ca_file=configured["operator_ca"]) as door:
        assert "access-control-allow-origin" not in door.get("/healthz", headers={"Origin": APP_ORIGIN}).headers


APP_PAGE = """<!doctype html><title>app</title><script type="module">
import { ShapeStream, Shape } from '/electric.mjs'
const params = new URLSearchParams(location.search)
const api = 'https://%(host)s'
const headers = { Authorization: 'Bearer ' + params.get('token') }
const json = { ...headers, 'content-type': 'application/json' }
try {
  // A write from this origin (a preflighted request), then the shape that holds it, then a live change.
  const created = await fetch(api + '/api/houses', { method: 'POST', headers: json,
                                                     body: JSON.stringify({ name: 'from the browser' }) })
  const house = (await created.json()).data.id
  const stream = new ShapeStream({ url: api + '/api/shapes/houses', headers })
  const shape = new Shape(stream)
  const first = await shape.rows
  const renamed = new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error('live change not seen')), 20000)
    shape.subscribe(({ rows }) => { if (rows.some((r) => r.id === house && r.name === 'renamed')) resolve(rows) })
  })
  const patched = await fetch(api + '/api/houses/' + house, { method: 'PATCH', headers: json,
                                                            body: JSON.stringify({ name: 'renamed' }) })
  await renamed
  window.result = { ok: true, status: [created.status, patched.status], house, first: first.map((r) => r.id),
                    handle: stream.shapeHandle }
} catch (error) {
  window.result = { ok: false, error: String(error) }
}
</script>"""

OTHER_PAGE = """<!doctype html><title>elsewhere</title><script type="module">
try {
  const answer = await fetch('https://%(host)s/api/me', { headers: { Authorization: 'Bearer x' } })
  window.result = { ok: true, status: answer.status }
} catch (error) {
  window.result = { ok: false, error: String(error) }
}
</script>"""


def _browse(configured: dict[str, Any], origin: str, page_html: str, query: str) -> dict[str, Any]:
    from playwright.sync_api import Route

    bundle = (PROTOCOL_DIR / "node_modules/@electric-sql/client/dist/index.browser.mjs").read_text()

    def app_origin(route: Route) -> None:
        if route.request.url.split("?")[0].endswith("/electric.mjs"):
            route.fulfill(status=200, content_type="text/javascript", body=bundle)
        else:
            route.fulfill(status=200, content_type="text/html", body=page_html % {"host": ACME})

    with chromium(configured["ca"], configured["work"], [ACME]) as context:
        # The app's origin counts as public and the door is on loopback here: Chromium asks the user before
        # such a page reaches a local address (Local Network Access). This is the user's "Allow".
        context.grant_permissions(["local-network-access"], origin=origin)
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        # The app's own origin is served from here; everything it asks of the tenant goes to the real door.
        page.route(f"{origin}/**", app_origin)
        page.goto(f"{origin}/index.html?{query}")
        page.wait_for_function("window.result !== undefined", timeout=30_000)
        return {**page.evaluate("window.result"), "console": console}


def test_the_official_electric_client_in_a_browser_on_another_origin_syncs_through_the_front_door(
        configured: dict[str, Any]) -> None:
    require_node_modules()
    token = issue_token("acme", str(uuid.uuid4()))
    result = _browse(configured, APP_ORIGIN, APP_PAGE, f"token={token}")
    assert result["ok"], result
    assert result["status"] == [201, 200] and result["first"] == [result["house"]], result
    assert result["handle"]


def test_a_browser_on_an_origin_not_allowed_cannot_read_the_api(configured: dict[str, Any]) -> None:
    result = _browse(configured, OTHER_ORIGIN, OTHER_PAGE, "")
    assert not result["ok"] and "Failed to fetch" in result["error"], result
    # Refused by the CORS rule itself (not by a certificate or address-space check).
    assert any("No 'Access-Control-Allow-Origin' header" in line for line in result["console"]), result
