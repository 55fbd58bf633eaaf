"""People log in to a tenant through its gateway (the relying party) and its embedded provider, both real:
Authorization Code with PKCE, the session's rotating refresh cookie, logout, the provider's tokens as bearer
tokens, and the attacks a relying party must refuse (issue 17)."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.identity import accounts
from appliance.identity.provider import runtime_config
from tests.support.identity import PASSWORD, Provider, TenantDoor, start_provider
from tests.support.pg import PgCluster
from tests.support.stack import (
    InProcessGateway,
    TenantEnv,
    gateway_in_process,
    make_tenant,
    provision,
    remove_base,
    stop_process,
    temp_base,
)

REFRESH_COOKIE = "__Secure-appliance-refresh"
APP_ORIGIN = "https://app.appliance.internal"


class Rig:
    def __init__(self, provider: Provider, gateway: InProcessGateway) -> None:
        self.provider = provider
        self.gateway = gateway
        self.env: TenantEnv = provider.env
        self.origin = self.env.tenant.url

    def browser(self, address: str | None = None) -> httpx.Client:
        client = address or f"203.0.113.{secrets.randbelow(250) + 1}"
        return httpx.Client(base_url=self.origin, timeout=30, transport=TenantDoor(self.provider, self.gateway.url,
                                                                                  client))

    def login(self, browser: httpx.Client, email: str, password: str = PASSWORD,
              return_to: str = "/app") -> httpx.Response:
        """Through the gateway's login to its callback; the callback's answer (not followed)."""
        start = browser.get("/api/auth/login", params={"return_to": return_to})
        assert start.status_code == 302, start.text
        assert start.headers["location"].startswith(self.provider.issuer + "/auth?")
        at_provider = browser.get(start.headers["location"])
        assert at_provider.status_code in (302, 303), at_provider.text
        signed_in = self.provider.sign_in(browser, urljoin(self.origin, at_provider.headers["location"]), email,
                                          password)
        callback = self.provider.follow(browser, signed_in, self.origin + "/api/auth/callback")
        return browser.get(urljoin(self.origin, callback.headers["location"]))

    def refresh(self, browser: httpx.Client, **kwargs: Any) -> httpx.Response:
        return browser.post("/api/auth/refresh", **kwargs)

    def me(self, token: str) -> httpx.Response:
        return httpx.get(self.gateway.url + "/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def audit(self, action: str) -> list[dict[str, Any]]:
        self.flush()
        rows = self.provider.sql("SELECT actor, subject, detail FROM audit.events WHERE action = %s ORDER BY seq",
                                 [action])
        return [{"actor": r[0], "subject": r[1], "detail": r[2]} for r in rows]

    def flush(self) -> None:
        import asyncio

        runtime = self.gateway.app.state.gateway
        asyncio.run_coroutine_threadsafe(runtime.audit.flush(), runtime.loop).result(10)

    def principal_of(self, account: uuid.UUID) -> uuid.UUID | None:
        rows = self.provider.sql("SELECT principal_id FROM public.identities WHERE issuer = %s AND subject = %s",
                                 [self.provider.issuer, str(account)])
        return rows[0][0] if rows else None

    def provider_key(self, alg: str = "EdDSA") -> tuple[dict[str, Any], Any]:
        """The provider's current signing key of `alg` (the JWK and a key PyJWT signs with)."""
        document = json.loads(self.env.tenant.secret_path("identity_jwks").read_text())
        jwk = next(k for k in document["keys"] if k["alg"] == alg and "retired_at" not in k)
        return jwk, jwt.algorithms.get_default_algorithms()[alg].from_jwk(json.dumps(jwk))

    def forged(self, claims: dict[str, Any], *, alg: str = "EdDSA", key: Any = None, kid: str | None = None) -> str:
        jwk, own = self.provider_key(alg)
        now = int(time.time())
        body = {"iss": self.provider.issuer, "aud": self.env.tenant.url, "sub": str(uuid.uuid4()), "iat": now,
                "exp": now + 300, **claims}
        return jwt.encode(body, key if key is not None else own, algorithm=alg,
                          headers={"kid": kid or jwk["kid"], "typ": "at+jwt"})


@pytest.fixture(scope="module")
def rig(pg_module: PgCluster) -> Iterator[Rig]:
    base = temp_base("appliance-login-")
    try:
        env = make_tenant(base, pg=pg_module, identity={"jwks_refetch_min_s": 60},
                          gateway={"cors_origins": [APP_ORIGIN]})
        provision(env)
        provider = start_provider(env, runtime_config(env.tenant))
        try:
            with gateway_in_process(env) as gateway:
                yield Rig(provider, gateway)
        finally:
            stop_process(provider.process)
    finally:
        remove_base(base)


def _access(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_a_person_logs_in_and_the_gateway_knows_them_as_one_principal(rig: Rig) -> None:
    account, email = rig.provider.add_account("ada")
    browser = rig.browser()
    done = rig.login(browser, email, return_to="/app?tab=1")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == rig.origin + "/app?tab=1"
    cookie = next(c for c in browser.cookies.jar if c.name == REFRESH_COOKIE)
    assert cookie.secure and cookie.path == "/api/auth" and cookie.has_nonstandard_attr("HttpOnly")
    assert "samesite=strict" in done.headers["set-cookie"].lower()
    token = _access(rig.refresh(browser))
    me = rig.me(token)
    assert me.status_code == 200, me.text
    principal = rig.principal_of(account)
    assert principal is not None and me.json()["principal_id"] == str(principal)
    assert rig.provider.sql("SELECT display_name, email, disabled FROM public.users WHERE principal_id = %s",
                            [principal]) == [("Ada", email, False)]
    # A second login of the same person is the same principal.
    assert rig.login(rig.browser(), email).status_code == 303
    assert rig.principal_of(account) == principal
    assert len(rig.provider.sql("SELECT 1 FROM public.identities WHERE principal_id = %s", [principal])) == 1
    logins = [e for e in rig.audit("auth.login") if e["actor"] == str(principal)]
    assert len(logins) == 2 and logins[0]["detail"]["first_login"] is True


def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(rig: Rig) -> None:
    _, email = rig.provider.add_account("rotating")
    browser = rig.browser()
    rig.login(browser, email)
    first = browser.cookies.get(REFRESH_COOKIE, path="/api/auth")
    _access(rig.refresh(browser))
    second = browser.cookies.get(REFRESH_COOKIE, path="/api/auth")
    assert first and second and first != second
    # The replaced token, presented again (a copy an attacker kept): refused, and the session ends for both.
    thief = rig.browser()
    thief.cookies.set(REFRESH_COOKIE, first, domain=urlsplit(rig.origin).hostname, path="/api/auth")
    stolen = rig.refresh(thief)
    assert stolen.status_code == 401 and stolen.json()["error"]["code"] == "invalid_session"
    assert rig.refresh(browser).status_code == 401
    assert any(e["detail"]["reason"] == "reuse_detected" for e in rig.audit("auth.refresh_refused"))


def test_logout_ends_the_session_and_names_the_providers_end_session(rig: Rig) -> None:
    _, email = rig.provider.add_account("leaving")
    browser = rig.browser()
    rig.login(browser, email)
    kept = browser.cookies.get(REFRESH_COOKIE, path="/api/auth")
    out = browser.post("/api/auth/logout")
    assert out.status_code == 200 and out.json()["logged_out"] is True
    assert out.json()["end_session_endpoint"] == rig.provider.issuer + "/session/end"
    assert REFRESH_COOKIE not in {c.name for c in browser.cookies.jar}
    replay = rig.browser()
    replay.cookies.set(REFRESH_COOKIE, kept, domain=urlsplit(rig.origin).hostname, path="/api/auth")
    assert rig.refresh(replay).status_code == 401
    assert rig.audit("auth.logout")


def test_a_login_state_is_good_once_and_only_in_the_browser_that_started_it(rig: Rig) -> None:
    _, email = rig.provider.add_account("replayer")
    browser = rig.browser()
    start = browser.get("/api/auth/login")
    at_provider = browser.get(start.headers["location"])
    signed_in = rig.provider.sign_in(browser, urljoin(rig.origin, at_provider.headers["location"]), email, PASSWORD)
    callback = urljoin(rig.origin, rig.provider.follow(browser, signed_in, rig.origin + "/api/auth/callback")
                       .headers["location"])
    # Another browser (no binding cookie) presenting the callback: refused, and the state is spent.
    elsewhere = rig.browser().get(callback)
    assert elsewhere.status_code == 400 and elsewhere.json()["error"]["code"] == "invalid_state"
    again = browser.get(callback)
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_state"
    assert REFRESH_COOKIE not in {c.name for c in browser.cookies.jar}
    reasons = [e["detail"]["reason"] for e in rig.audit("auth.login_refused")]
    assert "browser_mismatch" in reasons and "unknown_state" in reasons
    # A callback with a made-up state, and with none.
    assert browser.get("/api/auth/callback", params={"code": "x", "state": "made-up"}).status_code == 400
    assert browser.get("/api/auth/callback").status_code == 400


@pytest.mark.parametrize("return_to", ["https://evil.example.com/", "//evil.example.com/", "https://x@a/"])
def test_a_login_that_would_return_elsewhere_is_refused_before_any_redirect(rig: Rig, return_to: str) -> None:
    answer = rig.browser().get("/api/auth/login", params={"return_to": return_to})
    assert answer.status_code == 400 and "location" not in answer.headers
    assert answer.json()["error"]["code"] == "invalid_return_to"


def test_a_login_may_return_to_an_allowed_app_origin(rig: Rig) -> None:
    _, email = rig.provider.add_account("appuser")
    done = rig.login(rig.browser(), email, return_to=APP_ORIGIN + "/after")
    assert done.status_code == 303 and done.headers["location"] == APP_ORIGIN + "/after"


def test_bad_login_requests_get_clear_answers(rig: Rig) -> None:
    browser = rig.browser()
    unknown = browser.get("/api/auth/login", params={"issuer": "nope"})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_issuer"
    long = browser.get("/api/auth/login", params={"return_to": "/" + "a" * 5000})
    assert long.status_code == 422 and "error" in long.json()
    assert browser.get("/api/auth/callback", params={"state": "s" * 500}).status_code == 422
    browser.cookies.set(REFRESH_COOKIE, "x" * 3000, domain=urlsplit(rig.origin).hostname, path="/api/auth")
    oversized = browser.post("/api/auth/refresh")
    assert oversized.status_code == 422 and "error" in oversized.json()
    browser.cookies.set(REFRESH_COOKIE, "rt_not-a-token", domain=urlsplit(rig.origin).hostname, path="/api/auth")
    malformed = browser.post("/api/auth/refresh")
    assert malformed.status_code == 401 and malformed.json()["error"]["code"] == "invalid_session"


def test_refresh_and_logout_from_a_page_of_another_origin_are_refused(rig: Rig) -> None:
    _, email = rig.provider.add_account("csrf")
    browser = rig.browser()
    rig.login(browser, email)
    for path in ("/api/auth/refresh", "/api/auth/logout"):
        refused = browser.post(path, headers={"Origin": "https://evil.example.com"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_refused"
    # An allowed origin (and the tenant's own) may.
    assert rig.refresh(browser, headers={"Origin": APP_ORIGIN}).status_code == 200
    assert rig.refresh(browser, headers={"Origin": rig.origin}).status_code == 200


def test_a_disabled_person_cannot_refresh_log_in_or_use_a_provider_token(rig: Rig) -> None:
    account, email = rig.provider.add_account("disabled")
    browser = rig.browser()
    rig.login(browser, email)
    code, verifier, _ = rig.provider.code_flow(email)
    provider_token = rig.provider.exchange(code, verifier).json()["access_token"]
    assert rig.me(provider_token).status_code == 200
    with rig.env.superuser() as conn:
        accounts.set_disabled(conn, rig.env.tenant, email, True)
    refused = rig.refresh(browser)
    assert refused.status_code == 401
    # The gateway remembers a verified token for at most a minute; forget it to see the refusal now.
    principal = rig.principal_of(account)
    assert principal is not None
    rig.gateway.app.state.gateway.issuer_bearers.forget_principal(principal)
    assert rig.me(provider_token).status_code == 401
    with rig.env.superuser() as conn:
        accounts.set_disabled(conn, rig.env.tenant, email, False)
    # Enabled again: logging in works (the old session stays ended).
    assert rig.login(rig.browser(), email).status_code == 303
    assert rig.refresh(browser).status_code == 401


def test_the_providers_access_tokens_are_bearer_tokens_for_the_same_person(rig: Rig) -> None:
    account, email = rig.provider.add_account("cli")
    code, verifier, _ = rig.provider.code_flow(email)
    answer = rig.provider.exchange(code, verifier).json()
    me = rig.me(answer["access_token"])
    assert me.status_code == 200, me.text
    assert me.json()["principal_id"] == str(rig.principal_of(account))
    # Its ID token is not an access token for this API (its audience is the gateway's client id).
    refused = rig.me(answer["id_token"])
    assert refused.status_code == 401 and "not for this tenant" in refused.json()["error"]["message"]


def test_forged_and_stale_tokens_from_the_providers_issuer_are_refused(rig: Rig) -> None:
    jwk, _ = rig.provider_key()
    now = int(time.time())
    unsigned = (base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": jwk["kid"]}).encode())
                .rstrip(b"=").decode() + "." + base64.urlsafe_b64encode(json.dumps(
                    {"iss": rig.provider.issuer, "aud": rig.env.tenant.url, "sub": "x", "iat": now,
                     "exp": now + 60}).encode()).rstrip(b"=").decode() + ".")
    rsa_jwk, _ = rig.provider_key("RS256")
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps({k: rsa_jwk[k] for k in ("kty", "n", "e")}))
    from cryptography.hazmat.primitives import serialization

    pem = public_pem.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # HS256 "signed" with the provider's public key (algorithm confusion), built by hand: PyJWT refuses to.
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "kid": rsa_jwk["kid"]}).encode())
    body = b64(json.dumps({"iss": rig.provider.issuer, "aud": rig.env.tenant.url, "sub": "x", "iat": now,
                           "exp": now + 60}).encode())
    confused = f"{head}.{body}." + b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    cases = {
        "alg none": unsigned,
        "HS256 with the public key": confused,
        "expired": rig.forged({"exp": now - 120, "iat": now - 600}),
        "not valid yet": rig.forged({"nbf": now + 600}),
        "wrong audience": rig.forged({"aud": "https://globex.appliance.internal"}),
        "an issuer the tenant does not list": rig.forged({"iss": "https://evil.example.com/idp"}),
        "another key, our kid": rig.forged({}, key=Ed25519PrivateKey.generate()),
        "oversized": rig.forged({"pad": "x" * 20000}),
    }
    for name, token in cases.items():
        answer = rig.me(token)
        assert answer.status_code == 401, (name, answer.text)
        assert answer.json()["error"]["code"] == "invalid_token", name
    # The real thing, for contrast: a well-formed token the provider's key signed is accepted.
    assert rig.me(rig.forged({"sub": str(uuid.uuid4())})).status_code == 200


def test_another_tenants_provider_token_is_refused(rig: Rig, tmp_path: Path) -> None:
    other = make_tenant(tmp_path, "globex", slot=2)
    document = json.loads(other.tenant.secret_path("identity_jwks").read_text())
    jwk = document["keys"][0]
    key = jwt.algorithms.OKPAlgorithm.from_jwk(json.dumps(jwk))
    now = int(time.time())
    for iss in ("https://globex.appliance.internal/idp", rig.provider.issuer):
        token = jwt.encode({"iss": iss, "aud": rig.env.tenant.url, "sub": str(uuid.uuid4()), "iat": now,
                            "exp": now + 60}, key, algorithm="EdDSA", headers={"kid": jwk["kid"]})
        assert rig.me(token).status_code == 401, iss


def test_a_flood_of_unknown_key_ids_fetches_the_keys_at_most_once(rig: Rig) -> None:
    local = rig.gateway.app.state.gateway.issuers.by_name["local"]
    assert rig.me(rig.forged({"sub": str(uuid.uuid4())})).status_code == 200  # keys known
    before = local.jwks_fetches
    for _ in range(50):
        assert rig.me(rig.forged({}, kid=secrets.token_urlsafe(16))).status_code == 401
    assert local.jwks_fetches - before <= 1


def test_the_providers_events_land_in_the_audit_chain_once(rig: Rig) -> None:
    account, email = rig.provider.add_account("audited")
    browser = rig.browser()
    signed_in = rig.provider.sign_in(
        browser, urljoin(rig.origin, browser.get(browser.get("/api/auth/login").headers["location"])
                         .headers["location"]), email, "wrong password here")
    assert signed_in.status_code == 200  # the login page again, with the one generic answer
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        failed = [e for e in rig.audit("identity.login_failed") if e["subject"] == f"account:{account}"]
        if failed and not rig.provider.sql("SELECT 1 FROM identity.events"):
            break
        time.sleep(0.1)
    assert len(failed) == 1 and failed[0]["detail"]["reason"] == "wrong_password"
    assert "at" in failed[0]["detail"]
    assert rig.provider.sql("SELECT count(*) FROM identity.events") == [(0,)]


def test_a_code_flow_through_the_gateway_needs_the_right_client_secret(rig: Rig) -> None:
    """The code is redeemed with the gateway's client secret and PKCE verifier: a code taken from the redirect
    alone is useless at the token endpoint."""
    _, email = rig.provider.add_account("stolen-code")
    code, _verifier, _ = rig.provider.code_flow(email)
    with rig.provider.tcp() as http:
        wrong_secret = http.post("/idp/token", data={"grant_type": "authorization_code", "code": code,
                                                    "redirect_uri": rig.provider.redirect_uri()},
                                 auth=("gateway", "not-the-secret"), headers=rig.provider.forwarded())
    assert wrong_secret.status_code in (400, 401) and "access_token" not in wrong_secret.text
