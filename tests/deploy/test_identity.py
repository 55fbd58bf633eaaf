"""People log in to a deployed tenant (issue 17): the embedded provider as a supervised service behind the real
front door, people managed with `appliance user`, a person's browser (headless Chromium) signing in and using
the API and a shape from an app origin, and a command-line client through the device flow.

The deploy is changed for the module (acme allows the app origin) and put back afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from appliance.config import HostConfig, load_host_config
from appliance.identity.provider import issuer_url, runtime_config_path
from tests.support.browser import chromium
from tests.support.deployment import BIN, LOCAL_INVENTORY, deploy_or_fail, status_json
from tests.support.frontdoor import door_client, printed_ca
from tests.support.sync import PROTOCOL_DIR, require_node_modules

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

ACME = "acme.appliance.internal"
GLOBEX = "globex.appliance.internal"
APP_ORIGIN = "https://app.appliance.internal"
PASSWORD = "a long enough passphrase"


def appliance(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "appliance"), *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def configured(deployed: HostConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("identity")
    work.chmod(0o700)
    inventory = work / "inventory.py"
    inventory.write_text(LOCAL_INVENTORY.read_text().replace(
        '"acme": {"slot": 1},', f'"acme": {{"slot": 1, "gateway": {{"cors_origins": ["{APP_ORIGIN}"]}}}},'))
    assert APP_ORIGIN in inventory.read_text()
    try:
        deploy_or_fail(inventory)
        yield {"host": load_host_config(), "ca": printed_ca(work / "ca.pem"), "work": work}
    finally:
        deploy_or_fail()


def new_person(tenant: str = "acme") -> str:
    email = f"person-{secrets.token_hex(4)}@example.org"
    added = appliance("user", "add", tenant, email, "--name", "Test Person", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    return email


def test_status_shows_each_tenants_provider_and_its_issuer(configured: dict[str, Any]) -> None:
    code, report = status_json()
    assert code == 0, report
    for tenant in ("acme", "globex"):
        identity = report["tenants"][tenant]["components"]["identity"]
        assert identity["healthy"] and identity["running"], identity
        assert f"issuer https://{tenant}.appliance.internal/idp" in identity["detail"]


def test_each_tenants_provider_is_served_at_its_own_name_only(configured: dict[str, Any]) -> None:
    host: HostConfig = configured["host"]
    for name in (ACME, GLOBEX):
        with door_client(host, name, ca_file=configured["ca"]) as door:
            discovery = door.get("/idp/.well-known/openid-configuration")
            assert discovery.status_code == 200, discovery.text
            assert discovery.json()["issuer"] == f"https://{name}/idp"
            keys = door.get("/idp/jwks").json()["keys"]
            assert keys and not any("d" in k for k in keys)
    acme_kids = {k["kid"] for k in httpx.get(f"http://127.0.0.1:{host.tenant('acme').port('identity')}/idp/jwks")
                 .json()["keys"]}
    globex_kids = {k["kid"] for k in httpx.get(f"http://127.0.0.1:{host.tenant('globex').port('identity')}/idp/jwks")
                   .json()["keys"]}
    assert not acme_kids & globex_kids


def test_a_providers_port_answers_only_its_tenants_gateway(configured: dict[str, Any]) -> None:
    host: HostConfig = configured["host"]
    port = host.tenant("acme").port("identity")
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3).close()"
    assert subprocess.run(["setpriv", "--reuid", "t-acme-gw", "--regid", "t-acme-gw", "--clear-groups",
                           str(BIN / "python"), "-c", probe], capture_output=True).returncode == 0
    for other in ("tenant-acme", "t-acme-agent", "tenant-globex", "t-globex-gw", "appliance-frontdoor"):
        refused = subprocess.run(["setpriv", "--reuid", other, "--regid", other, "--clear-groups",
                                  str(BIN / "python"), "-c", probe], capture_output=True, text=True)
        assert refused.returncode != 0 and "Connection refused" in refused.stderr, (other, refused.stderr)


def test_user_commands_manage_people_and_refuse_bad_input(configured: dict[str, Any]) -> None:
    email = new_person()
    listed = appliance("user", "list", "acme", "--json")
    assert listed.returncode == 0
    person = next(p for p in json.loads(listed.stdout) if p["email"] == email)
    assert person["password_set"] and not person["disabled"]
    link = appliance("user", "add", "acme", f"linked-{secrets.token_hex(3)}@example.org")
    assert link.returncode == 0 and "https://acme.appliance.internal/idp/setup/" in link.stdout
    for args, stdin, says in (
        (["user", "add", "acme", email, "--password-stdin"], PASSWORD + "\n", "exists already"),
        (["user", "add", "acme", "not-an-email", "--password-stdin"], PASSWORD + "\n", "not an email"),
        (["user", "add", "acme", f"s-{secrets.token_hex(3)}@example.org", "--password-stdin"], "short\n",
         "at least 12"),
        (["user", "add", "acme", f"e-{secrets.token_hex(3)}@example.org", "--password-stdin"], "", "nothing on"),
        (["user", "disable", "acme", "nobody@example.org"], None, "no account"),
        (["user", "list", "nosuchtenant"], None, "no tenant"),
    ):
        refused = appliance(*args, stdin=stdin)
        assert refused.returncode != 0 and says in refused.stderr, (args, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr
    # No password ever appears where others can read it.
    assert PASSWORD not in Path("/srv/appliance/tenants/acme/logs/identity.log").read_text(errors="replace")


def test_an_operator_action_on_a_person_is_in_the_audit_trail(configured: dict[str, Any]) -> None:
    email = new_person()
    assert appliance("user", "disable", "acme", email).returncode == 0
    assert appliance("user", "enable", "acme", email).returncode == 0
    from appliance.pg import connect

    with connect(configured["host"].tenant("acme")) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit.events WHERE action LIKE 'operator.identity.%%' AND detail->>'email' = %s "
            "ORDER BY seq", [email])]
    assert actions == ["operator.identity.user_added", "operator.identity.user_disabled",
                       "operator.identity.user_enabled"]


APP_PAGE = """<!doctype html><title>app</title><script type="module">
import { ShapeStream, Shape } from '/electric.mjs'
const api = 'https://%(host)s'
try {
  // The login left a session cookie at the tenant: the app trades it for an access token.
  const refreshed = await fetch(api + '/api/auth/refresh', { method: 'POST', credentials: 'include' })
  const { access_token } = await refreshed.json()
  const headers = { Authorization: 'Bearer ' + access_token }
  const me = await (await fetch(api + '/api/me', { headers })).json()
  const created = await fetch(api + '/api/houses', { method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'mine' }) })
  const house = (await created.json()).data.id
  const stream = new ShapeStream({ url: api + '/api/shapes/houses', headers })
  const rows = await new Shape(stream).rows
  window.result = { ok: true, refreshed: refreshed.status, principal: me.principal_id, created: created.status,
                    house, rows: rows.map((r) => r.id) }
} catch (error) {
  window.result = { ok: false, error: String(error) }
}
</script>"""


def test_a_person_signs_in_with_a_browser_and_uses_the_api_from_the_app(configured: dict[str, Any]) -> None:
    from playwright.sync_api import Route

    require_node_modules()
    email = new_person()
    bundle = (PROTOCOL_DIR / "node_modules/@electric-sql/client/dist/index.browser.mjs").read_text()

    def app(route: Route) -> None:
        if route.request.url.split("?")[0].endswith("/electric.mjs"):
            route.fulfill(status=200, content_type="text/javascript", body=bundle)
        else:
            route.fulfill(status=200, content_type="text/html", body=APP_PAGE % {"host": ACME})

    with chromium(configured["ca"], configured["work"], [ACME]) as context:
        context.grant_permissions(["local-network-access"], origin=APP_ORIGIN)
        page = context.new_page()
        page.route(f"{APP_ORIGIN}/**", app)
        page.goto(f"https://{ACME}/api/auth/login?return_to={APP_ORIGIN}/index.html")
        # The tenant's own login page, at its own name.
        assert page.url.startswith(f"https://{ACME}/idp/interaction/"), page.url
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", "not the password")
        page.click("button[type=submit]")
        assert "Email or password is not right." in page.content()
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        try:
            page.wait_for_url(f"{APP_ORIGIN}/index.html", timeout=30_000)
        except Exception as exc:
            raise AssertionError(f"not back at the app: at {page.url}\n{page.content()[:2000]}") from exc
        page.wait_for_function("window.result !== undefined", timeout=30_000)
        result = page.evaluate("window.result")
        cookies = {c["name"]: c for c in context.cookies(f"https://{ACME}/api/auth/refresh")}
    assert result["ok"], result
    assert result["refreshed"] == 200 and result["created"] == 201 and result["house"] in result["rows"], result
    refresh = cookies["__Secure-appliance-refresh"]
    assert refresh["httpOnly"] and refresh["secure"] and refresh["sameSite"] == "Strict"
    from appliance.pg import connect

    with connect(configured["host"].tenant("acme")) as conn:
        principal = conn.execute("SELECT principal_id FROM public.users WHERE email = %s", [email]).fetchone()
        assert principal and str(principal[0]) == result["principal"]
        logins = conn.execute("SELECT count(*) FROM audit.events WHERE action = 'auth.login' AND actor = %s",
                              [result["principal"]]).fetchone()
        assert logins == (1,)


def test_a_command_line_client_signs_in_through_the_device_flow(configured: dict[str, Any]) -> None:
    host: HostConfig = configured["host"]
    acme = host.tenant("acme")
    email = new_person()
    with door_client(host, ACME, ca_file=configured["ca"]) as door:
        started = door.post("/idp/device/auth", data={"client_id": "cli", "scope": "openid offline_access"})
        assert started.status_code == 200, started.text
        grant = started.json()
        assert grant["verification_uri"] == f"https://{ACME}/idp/device"
        pending = door.post("/idp/token", data={"client_id": "cli", "device_code": grant["device_code"],
                                                "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
        assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
        # The person approves in their browser.
        with chromium(configured["ca"], configured["work"], [ACME]) as context:
            page = context.new_page()
            page.goto(grant["verification_uri_complete"])
            # The prefilled code is submitted, then confirmed (the code shown matches the device's), then the
            # person signs in.
            go_on = page.locator("button[type=submit]:not([name=abort])")
            for _ in range(3):
                if page.locator("input[name=email]").count():
                    break
                assert grant["user_code"] in page.content() or "Continue" in page.content(), page.content()
                go_on.first.click()
                page.wait_for_load_state()
            page.fill("input[name=email]", email)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            assert "device is signed in" in page.content(), page.content()
        tokens: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = door.post("/idp/token", data={"client_id": "cli", "device_code": grant["device_code"],
                                                   "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
            if answer.status_code == 200:
                tokens = answer.json()
                break
            time.sleep(max(1, grant.get("interval", 1)))
        assert tokens.get("access_token") and tokens.get("refresh_token"), tokens
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["iss"] == issuer_url(acme) and claims["aud"] == acme.url
        me = door.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200, me.text
        # The refresh token keeps the client working.
        renewed = door.post("/idp/token", data={"client_id": "cli", "grant_type": "refresh_token",
                                                "refresh_token": tokens["refresh_token"]})
        assert renewed.status_code == 200 and renewed.json()["access_token"] != tokens["access_token"]
    # globex's gateway knows nothing of acme's provider.
    with door_client(host, GLOBEX, ca_file=configured["ca"]) as other:
        refused = other.get("/api/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert refused.status_code == 401


def test_no_secret_of_the_identity_plane_shows_in_processes_or_its_files(configured: dict[str, Any]) -> None:
    acme = configured["host"].tenant("acme")
    secrets_of = [acme.read_secret(name) for name in ("identity_cookie_keys", "identity_gateway_client_secret",
                                                       "db_identity_password")]
    jwks = json.loads(acme.secret_path("identity_jwks").read_text())
    secrets_of += [k["d"] for k in jwks["keys"]]
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    runtime = runtime_config_path(acme).read_text()
    log = acme.log_file("identity").read_text(errors="replace")
    for value in secrets_of:
        assert value not in processes and value not in runtime and value not in log
    import pwd

    assert runtime_config_path(acme).stat().st_mode & 0o777 == 0o600
    assert pwd.getpwuid(runtime_config_path(acme).stat().st_uid).pw_name == acme.os_user("identity")
    # Each of its secrets readable by the provider's user, the backup (the tenant's user) and, for the client
    # secret, the gateway: test_local_deploy's SECRET_FILES, checked for every secret.


def _signed_by(acme: Any, jwk: dict[str, Any]) -> str:
    """A token as the provider signs one with `jwk` (the tests, as root, read its key file)."""
    now = int(time.time())
    key = jwt.algorithms.get_default_algorithms()[jwk["alg"]].from_jwk(json.dumps(
        {k: v for k, v in jwk.items() if k != "retired_at"}))
    return jwt.encode({"iss": issuer_url(acme), "aud": acme.url, "sub": str(uuid.uuid4()), "iat": now,
                       "exp": now + 120}, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"], "typ": "at+jwt"})


def test_rotated_keys_sign_new_tokens_and_old_tokens_still_verify(configured: dict[str, Any]) -> None:
    host: HostConfig = configured["host"]
    acme = host.tenant("acme")
    old = json.loads(acme.secret_path("identity_jwks").read_text())["keys"][0]
    with door_client(host, ACME, ca_file=configured["ca"]) as door:
        # The gateway knows the current keys (it has just fetched them).
        assert door.get("/api/me", headers={"Authorization": f"Bearer {_signed_by(acme, old)}"}).status_code == 200
        rotated = appliance("identity", "rotate-keys", "acme")
        assert rotated.returncode == 0, rotated.stderr
        new = json.loads(acme.secret_path("identity_jwks").read_text())["keys"][0]
        assert new["kid"] != old["kid"] and "retired_at" not in new
        # At once (the gateway is notified within moments, long before its refetch limit of a minute): a token
        # the new key signed is accepted, and one the old key signed still is.
        deadline = time.monotonic() + 3
        while True:
            me = door.get("/api/me", headers={"Authorization": f"Bearer {_signed_by(acme, new)}"})
            if me.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert me.status_code == 200, me.text
        me = door.get("/api/me", headers={"Authorization": f"Bearer {_signed_by(acme, old)}"})
        assert me.status_code == 200, me.text
    from appliance.pg import connect

    with connect(acme) as conn:
        event = conn.execute("SELECT detail FROM audit.events WHERE action = 'operator.identity.keys_rotated' "
                             "ORDER BY seq DESC LIMIT 1").fetchone()
    assert event and new["kid"] in event[0]["new_kids"]
