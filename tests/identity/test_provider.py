"""The embedded OIDC provider end to end: the real Node server on a provisioned tenant's Postgres, driven as the
gateway drives it (loopback TCP) and as a browser does (through the front door's socket)."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from appliance.identity.keys import new_jwks
from tests.support.identity import PASSWORD, Provider, form_action, hidden_fields, pkce_pair, start_provider
from tests.support.ports import free_port

WRONG = "Email or password is not right."
# The tenant's own origin is where a login's redirects lead (the gateway's callback, then the app).
CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https://acme.appliance.internal; "
       "frame-ancestors 'none'; base-uri 'none'")


def jwks(idp: Provider) -> dict[str, Any]:
    with idp.tcp() as http:
        response = http.get("/idp/jwks")
    assert response.status_code == 200
    return dict(response.json())


def verified(idp: Provider, token: str, algorithm: str, audience: str) -> dict[str, Any]:
    """The token's claims once its signature checks out against the provider's published keys."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == algorithm
    key = jwt.PyJWK(next(k for k in jwks(idp)["keys"] if k["kid"] == header["kid"]))
    return dict(jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=idp.issuer))


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def login_page(idp: Provider, browser: httpx.Client) -> str:
    """A fresh interaction's login form action (an authorization request for the gateway)."""
    _, challenge = pkce_pair()
    start = idp.authorize(browser, challenge, "n", "s")
    assert start.status_code == 303, start.text
    page = browser.get(start.headers["location"])
    assert page.status_code == 200
    return urljoin(str(page.url), form_action(page.text))


def account_row(idp: Provider, account: Any) -> tuple[Any, ...]:
    return idp.sql("SELECT failed_logins, locked_until FROM identity.accounts WHERE id = %s", [account])[0]


# -- discovery and keys --------------------------------------------------------------------------------------


def test_discovery_over_tcp_names_the_loopback_urls_and_the_configured_issuer(idp: Provider) -> None:
    with idp.tcp() as http:
        response = http.get("/idp/.well-known/openid-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == idp.issuer
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "device_authorization_endpoint"):
        assert document[name].startswith(f"{idp.tcp_url}/idp/"), document[name]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert "pushed_authorization_request_endpoint" not in document
    assert "userinfo_endpoint" not in document  # access tokens are for the API; claims come in the ID token


@pytest.mark.parametrize("path", ["tcp", "front door"])
def test_discovery_names_the_public_urls_when_the_host_is_forwarded(idp: Provider, path: str) -> None:
    if path == "tcp":
        with idp.tcp() as http:
            response = http.get("/idp/.well-known/openid-configuration", headers=idp.forwarded())
    else:
        with idp.browser() as browser:
            response = browser.get("/idp/.well-known/openid-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == "https://acme.appliance.internal/idp"
    assert document["authorization_endpoint"] == "https://acme.appliance.internal/idp/auth"
    assert document["token_endpoint"] == "https://acme.appliance.internal/idp/token"
    assert document["jwks_uri"] == "https://acme.appliance.internal/idp/jwks"
    assert document["device_authorization_endpoint"] == "https://acme.appliance.internal/idp/device/auth"


def test_jwks_publishes_the_public_part_of_every_key(idp: Provider) -> None:
    published = jwks(idp)["keys"]
    secret = json.loads(Path(idp.config["jwks_file"]).read_text())["keys"]
    assert [k["kid"] for k in published] == [k["kid"] for k in secret]
    assert {k["alg"] for k in published} == {"EdDSA", "RS256"}
    for key in published:
        assert not {"d", "p", "q", "dp", "dq", "qi", "retired_at"} & set(key), key


def test_paths_outside_the_mount_point_are_not_found(idp: Provider) -> None:
    with idp.tcp() as http:
        assert http.get("/.well-known/openid-configuration").status_code == 404
        assert http.get("/idpx/jwks").status_code == 404


# -- the authorization code flow (the gateway's browser login) -----------------------------------------------


def test_code_flow_with_pkce_gives_the_gateway_an_api_token_and_a_verified_id_token(idp: Provider) -> None:
    account, email = idp.add_account("ada")
    started = time.monotonic()
    code, verifier, nonce = idp.code_flow(email)
    response = idp.exchange(code, verifier)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert "refresh_token" not in tokens  # the gateway keeps its own sessions

    access = verified(idp, tokens["access_token"], "EdDSA", audience=idp.config["resource"])
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"
    assert access["sub"] == str(account)
    assert access["client_id"] == "gateway"
    assert access["aud"] == "https://acme.appliance.internal"
    assert access["exp"] - access["iat"] == idp.config["ttl_s"]["access_token"]

    identity = verified(idp, tokens["id_token"], "EdDSA", audience="gateway")
    assert identity["nonce"] == nonce
    assert identity["sub"] == str(account)
    assert identity["email"] == email
    assert identity["email_verified"] is True
    assert identity["name"] == "Ada"
    assert elapsed < 5, f"a code flow took {elapsed:.2f}s"

    [event] = idp.events("identity.login", subject=f"account:{account}")
    assert event["actor"] == f"account:{account}"
    assert event["detail"]["client_id"] == "gateway"
    assert event["detail"]["client"].startswith("198.51.100.")


def test_a_code_is_good_once(idp: Provider) -> None:
    _, email = idp.add_account("bob")
    code, verifier, _ = idp.code_flow(email)
    assert idp.exchange(code, verifier).status_code == 200
    again = idp.exchange(code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("verifier", [None, "a-verifier-that-is-not-the-one-of-this-code-0123456789abcdef"])
def test_a_code_needs_its_pkce_verifier(idp: Provider, verifier: str | None) -> None:
    _, email = idp.add_account("cy")
    code, _, _ = idp.code_flow(email)
    response = idp.exchange(code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_grant", "invalid_request")
    assert "access_token" not in response.text


@pytest.mark.parametrize("params", [{}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}])
def test_an_authorization_request_without_s256_pkce_is_refused(idp: Provider, params: dict[str, str]) -> None:
    with idp.browser() as browser:
        response = browser.get("/idp/auth", params={
            "client_id": "gateway", "response_type": "code", "scope": "openid", "redirect_uri": idp.redirect_uri(),
            "state": "s", **params})
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(idp.redirect_uri())
    assert "error=invalid_request" in location
    assert "code=" not in location


def test_the_token_endpoint_wants_the_gateway_secret(idp: Provider) -> None:
    _, email = idp.add_account("dee")
    code, verifier, _ = idp.code_flow(email)
    with idp.tcp() as http:
        response = http.post("/idp/token", auth=("gateway", "not-the-secret"), data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": idp.redirect_uri(),
            "code_verifier": verifier})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# -- passwords -----------------------------------------------------------------------------------------------


def test_a_wrong_password_and_an_unknown_email_get_the_same_answer_in_similar_time(idp: Provider) -> None:
    account, email = idp.add_account("eve")
    unknown = "nobody-" + email
    answers, times = {}, {}
    with idp.browser() as browser:
        action = login_page(idp, browser)
        for label, who in (("wrong", email), ("unknown", unknown)):
            durations = []
            for _ in range(2):
                started = time.monotonic()
                response = browser.post(action, data={"email": who, "password": "not the password at all"})
                durations.append(time.monotonic() - started)
            answers[label] = (response.status_code, response.text.replace(who, "EMAIL"))
            times[label] = statistics.median(durations)
    assert answers["wrong"] == answers["unknown"]
    status, text = answers["wrong"]
    assert status == 200
    assert WRONG in text
    # An unknown email is checked against a dummy hash: no shortcut that tells it apart by time.
    assert times["unknown"] > 0.4 * times["wrong"], times

    wrong = idp.events("identity.login_failed", subject=f"account:{account}")
    assert [e["detail"]["reason"] for e in wrong] == ["wrong_password", "wrong_password"]
    assert wrong[0]["actor"] == "anonymous"
    assert wrong[0]["detail"]["email"] == email
    unknown_events = [e for e in idp.events("identity.login_failed") if e["detail"]["email"] == unknown]
    assert [(e["subject"], e["detail"]["reason"]) for e in unknown_events] == [(None, "unknown_account")] * 2
    for event in wrong + unknown_events:
        assert "not the password" not in json.dumps(event)
    assert account_row(idp, account)[0] == 2


def test_failures_lock_the_account_while_another_account_still_signs_in(idp: Provider) -> None:
    account, email = idp.add_account("fay")
    _, other = idp.add_account("gus")
    max_failures = idp.config["login"]["max_failures"]
    with idp.browser() as browser:
        action = login_page(idp, browser)
        for _ in range(max_failures):
            response = browser.post(action, data={"email": email, "password": "guessing-guessing"})
            assert response.status_code == 200
        failed_logins, locked_until = account_row(idp, account)
        assert failed_logins == max_failures and locked_until is not None
        # The right password now gets the same answer as any failure.
        response = browser.post(action, data={"email": email, "password": PASSWORD})
        assert response.status_code == 200
        assert WRONG in response.text
    code, verifier, _ = idp.code_flow(other)
    assert idp.exchange(code, verifier).status_code == 200

    [locked] = idp.events("identity.account_locked", subject=f"account:{account}")
    assert locked["detail"]["failures"] == max_failures
    reasons = [e["detail"]["reason"] for e in idp.events("identity.login_failed", subject=f"account:{account}")]
    assert reasons == ["wrong_password"] * max_failures + ["locked"]


def test_a_hundred_wrong_passwords_from_a_hundred_addresses_lock_one_account_only(idp: Provider) -> None:
    """A distributed guess at one account (no address over its own limit): the account locks and stays locked
    with the right password, while another account signs in untouched."""
    account, email = idp.add_account("target")
    _, bystander = idp.add_account("bystander")
    for n in range(100):
        with idp.browser(f"192.0.2.{n + 1}") as browser:
            response = browser.post(login_page(idp, browser), data={"email": email, "password": f"guess-{n:04d}"})
            assert response.status_code == 200 and WRONG in response.text
    failed_logins, locked_until = account_row(idp, account)
    assert failed_logins >= idp.config["login"]["max_failures"] and locked_until is not None
    with idp.browser() as browser:
        response = browser.post(login_page(idp, browser), data={"email": email, "password": PASSWORD})
        assert WRONG in response.text
    code, verifier, _ = idp.code_flow(bystander)
    assert idp.exchange(code, verifier).status_code == 200
    assert len(idp.events("identity.account_locked", subject=f"account:{account}")) == 1
    assert len(idp.events("identity.login_failed", subject=f"account:{account}")) == 101


def test_a_success_resets_the_failure_count(idp: Provider) -> None:
    account, email = idp.add_account("hal")
    with idp.browser() as browser:
        action = login_page(idp, browser)
        assert browser.post(action, data={"email": email, "password": "nope-nope-nope"}).status_code == 200
        assert account_row(idp, account)[0] == 1
        code, verifier, _ = idp.code_flow(email, browser=browser)
    assert idp.exchange(code, verifier).status_code == 200
    assert account_row(idp, account) == (0, None)


def test_a_disabled_account_cannot_sign_in_or_redeem_a_code(idp: Provider) -> None:
    account, email = idp.add_account("ida")
    code, verifier, _ = idp.code_flow(email)
    # Only the flag (the operator's `user disable` also ends the account's grants): the provider itself must
    # not find a disabled account.
    idp.sql("UPDATE identity.accounts SET disabled = true WHERE id = %s", [account])
    refused = idp.exchange(code, verifier)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    with idp.browser() as browser:
        response = browser.post(login_page(idp, browser), data={"email": email, "password": PASSWORD})
    assert response.status_code == 200
    assert WRONG in response.text
    [event] = idp.events("identity.login_failed", subject=f"account:{account}")
    assert event["detail"]["reason"] == "disabled"


def test_a_browser_session_of_a_disabled_account_no_longer_signs_in(idp: Provider) -> None:
    account, email = idp.add_account("ivo")
    with idp.browser() as browser:
        idp.code_flow(email, browser=browser)
        idp.sql("UPDATE identity.accounts SET disabled = true WHERE id = %s", [account])
        _, challenge = pkce_pair()
        again = idp.authorize(browser, challenge, "n", "s")
        # Back to the password form, not a code for the disabled account.
        assert again.status_code == 303
        assert "/idp/interaction/" in again.headers["location"]
        page = browser.get(again.headers["location"])
        assert page.status_code == 200 and 'type="password"' in page.text


def test_login_attempts_are_limited_per_client_address_through_the_front_door(idp: Provider) -> None:
    limit = idp.config["login"]["per_client_per_minute"]
    attempt = {"email": "nobody@example.org", "password": "whatever-whatever"}
    with idp.browser("203.0.113.9") as limited:
        action = login_page(idp, limited)
        for _ in range(limit):
            assert limited.post(action, data=attempt).status_code == 200
        refused = limited.post(action, data=attempt)
        assert refused.status_code == 429
        assert "Try again in a minute" in refused.text
        assert_page_headers(refused)
    with idp.browser("203.0.113.10") as neighbour:
        assert neighbour.post(login_page(idp, neighbour), data=attempt).status_code == 200
    # Over TCP, X-Forwarded-For is not believed: the attempt counts for the TCP peer, not for 203.0.113.9.
    with idp.tcp(headers={"x-forwarded-for": "203.0.113.9"}) as direct:
        response = direct.post(login_page(idp, direct), data={**attempt, "email": "tcp-nobody@example.org"})
    assert response.status_code == 200
    [event] = [e for e in idp.events("identity.login_failed") if e["detail"]["email"] == "tcp-nobody@example.org"]
    assert event["detail"]["client"] == "127.0.0.1"
    limited_events = [e for e in idp.events("identity.login_failed") if e["detail"]["client"] == "203.0.113.9"]
    assert len(limited_events) == limit


# -- setup links ---------------------------------------------------------------------------------------------


def test_a_setup_link_sets_the_password_once_and_then_the_person_signs_in(idp: Provider) -> None:
    account, email = idp.add_account("jo", password=None)
    with idp.browser() as browser:
        refused = browser.post(login_page(idp, browser), data={"email": email, "password": PASSWORD})
        assert refused.status_code == 200
        link = urlsplit(idp.setup_link(email)).path
        form = browser.get(link)
        assert form.status_code == 200
        assert email in form.text
        assert_page_headers(form)
        assert browser.post(link, data={"password": "short", "repeat": "short"}).status_code == 400
        assert browser.post(link, data={"password": PASSWORD, "repeat": PASSWORD + "!"}).status_code == 400
        done = browser.post(link, data={"password": PASSWORD, "repeat": PASSWORD})
        assert done.status_code == 200, done.text
        assert "password is set" in done.text
        for again in (browser.get(link), browser.post(link, data={"password": PASSWORD, "repeat": PASSWORD})):
            assert again.status_code == 404
            assert "no longer valid" in again.text
    assert idp.sql("SELECT used_at IS NOT NULL FROM identity.setup_links WHERE account_id = %s", [account]) == [
        (True,)]
    # Hashed at the tenant's argon2id cost, in the PHC form the operator's tools (argon2-cffi) read too.
    [(stored,)] = idp.sql("SELECT password_hash FROM identity.accounts WHERE id = %s", [account])
    cost = idp.config["argon2"]
    assert stored.startswith(f"$argon2id$v=19$m={cost['memory_kib']},t={cost['time_cost']},p=1$")
    assert PasswordHasher().verify(stored, PASSWORD)
    code, verifier, _ = idp.code_flow(email)
    assert idp.exchange(code, verifier).status_code == 200
    [event] = idp.events("identity.password_set", subject=f"account:{account}")
    assert event["actor"] == f"account:{account}"
    [failed] = idp.events("identity.login_failed", subject=f"account:{account}")
    assert failed["detail"]["reason"] == "no_password"


def test_an_unknown_or_expired_setup_link_is_not_found(idp: Provider) -> None:
    account, email = idp.add_account("ken", password=None)
    expired = urlsplit(idp.setup_link(email)).path
    idp.sql("UPDATE identity.setup_links SET expires_at = now() - interval '1 second' WHERE account_id = %s",
            [account])
    with idp.browser() as browser:
        for path in (expired, "/idp/setup/" + "A" * 43, "/idp/setup/%3Cscript%3E"):
            response = browser.get(path)
            assert response.status_code == 404
            assert "no longer valid" in response.text
            assert_page_headers(response)
        refused = browser.post(expired, data={"password": PASSWORD, "repeat": PASSWORD})
        assert refused.status_code == 404
    assert idp.sql("SELECT password_hash FROM identity.accounts WHERE id = %s", [account]) == [(None,)]


# -- the device flow (command-line clients) ------------------------------------------------------------------


def device_authorization(idp: Provider, cli: httpx.Client) -> dict[str, Any]:
    response = cli.post("/idp/device/auth", data={"client_id": "cli", "scope": "openid offline_access"})
    assert response.status_code == 200, response.text
    grant = dict(response.json())
    idp.secrets_seen.append(grant["device_code"])
    return grant


def poll(cli: httpx.Client, device_code: str) -> httpx.Response:
    return cli.post("/idp/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                        "device_code": device_code, "client_id": "cli"})


def enter_user_code(browser: httpx.Client, grant: dict[str, Any]) -> httpx.Response:
    """The person opens the verification page and types the code; the confirmation page."""
    page = browser.get(urlsplit(grant["verification_uri"]).path)
    assert page.status_code == 200
    assert_page_headers(page)
    fields = hidden_fields(page.text)
    confirm = browser.post(form_action(page.text), data={"xsrf": fields["xsrf"], "user_code": grant["user_code"]})
    assert confirm.status_code == 200, confirm.text
    assert_page_headers(confirm)
    return confirm


def test_device_flow_gives_the_cli_an_api_token_and_a_refresh_token(idp: Provider) -> None:
    account, email = idp.add_account("kim")
    with idp.browser() as cli, idp.browser() as browser:
        grant = device_authorization(idp, cli)
        assert grant["verification_uri"] == "https://acme.appliance.internal/idp/device"
        assert poll(cli, grant["device_code"]).json()["error"] == "authorization_pending"

        confirm = enter_user_code(browser, grant)
        assert grant["user_code"] in confirm.text
        to_login = browser.post(form_action(confirm.text), data=hidden_fields(confirm.text))
        assert to_login.status_code == 303
        login = idp.sign_in(browser, to_login.headers["location"], email, PASSWORD)
        assert login.status_code == 303
        done = browser.get(login.headers["location"])
        assert done.status_code == 200, done.text
        assert "device is signed in" in done.text
        assert_page_headers(done)

        response = poll(cli, grant["device_code"])
        assert response.status_code == 200, response.text
        tokens = response.json()
        idp.secrets_seen.extend(tokens[k] for k in ("access_token", "refresh_token", "id_token"))
        access = verified(idp, tokens["access_token"], "EdDSA", audience=idp.config["resource"])
        assert access["sub"] == str(account)
        assert access["client_id"] == "cli"
        assert "refresh_token" in tokens

        refreshed = cli.post("/idp/token", data={"grant_type": "refresh_token", "client_id": "cli",
                                                 "refresh_token": tokens["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        renewed = refreshed.json()
        idp.secrets_seen.extend(renewed[k] for k in ("access_token", "refresh_token"))
        assert verified(idp, renewed["access_token"], "EdDSA", audience=idp.config["resource"])["sub"] == str(
            account)
        assert renewed["refresh_token"] != tokens["refresh_token"]  # rotated: the CLI keeps the new one
        assert poll(cli, grant["device_code"]).status_code == 400  # a device code is good once

    [event] = idp.events("identity.device_approved", subject=f"account:{account}")
    assert event["detail"]["client_id"] == "cli"
    assert event["detail"]["client"].startswith("198.51.100.")


def test_a_person_can_deny_a_device_opened_from_the_complete_link(idp: Provider) -> None:
    with idp.browser() as cli, idp.browser() as browser:
        grant = device_authorization(idp, cli)
        # verification_uri_complete carries the code: oidc-provider's auto-submitting form, shown without its
        # script (the CSP forbids it) so the person submits it.
        prefilled = browser.get(urlsplit(grant["verification_uri_complete"]).path,
                                params=dict(parse_qsl(urlsplit(grant["verification_uri_complete"]).query)))
        assert prefilled.status_code == 200
        assert_page_headers(prefilled)
        assert "<script" not in prefilled.text and "<button" in prefilled.text
        confirm = browser.post(form_action(prefilled.text), data=hidden_fields(prefilled.text))
        assert confirm.status_code == 200
        assert grant["user_code"] in confirm.text
        denied = browser.post(form_action(confirm.text), data={**hidden_fields(confirm.text), "abort": "yes"})
        assert denied.status_code == 200
        assert "cancelled" in denied.text
        assert poll(cli, grant["device_code"]).json()["error"] == "access_denied"
    assert [e for e in idp.events("identity.device_denied") if e["detail"]["client_id"] == "cli"]


# -- logout --------------------------------------------------------------------------------------------------


def test_signing_out_ends_the_session_and_is_recorded(idp: Provider) -> None:
    account, email = idp.add_account("lu")
    with idp.browser() as browser:
        idp.code_flow(email, browser=browser)
        # The provider's session cookie: signed, for the provider's path only, never sent over plain HTTP.
        session = {c.name: c for c in browser.cookies.jar if c.name.startswith("_session")}
        assert set(session) == {"_session", "_session.sig"}
        for cookie in session.values():
            assert cookie.path == "/idp" and cookie.secure and cookie.has_nonstandard_attr("httponly")
        page = browser.get("/idp/session/end")
        assert page.status_code == 200
        assert_page_headers(page)
        out = browser.post(form_action(page.text), data={**hidden_fields(page.text), "logout": "yes"})
        assert out.status_code == 303
        # Signed out: the next authorization request asks for the password again.
        _, challenge = pkce_pair()
        again = idp.authorize(browser, challenge, "n", "s")
        assert "/idp/interaction/" in again.headers["location"]
    [event] = idp.events("identity.logout", subject=f"account:{account}")
    assert event["detail"]["everywhere"] is True


# -- bad input -----------------------------------------------------------------------------------------------


def test_an_oversized_form_is_refused(idp: Provider) -> None:
    big = {"email": "a@example.org", "password": "x" * (17 * 1024)}
    with idp.browser() as browser:
        action = login_page(idp, browser)
        assert browser.post(action, data=big).status_code == 413

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(20):
                yield b"password=" + b"x" * 1024 + b"&"

        response = browser.post(action, content=chunked(),
                                headers={"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 413


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"email": "a@example.org"}', "application/json"),
    (b"email=a%40example.org", "application/x-www-form-urlencoded"),
    (b"email=a&email=b&password=c", "application/x-www-form-urlencoded"),
    (b"email=\xff\xfe&password=x", "application/x-www-form-urlencoded"),
])
def test_a_malformed_form_is_a_bad_request(idp: Provider, body: bytes, content_type: str) -> None:
    with idp.browser() as browser:
        response = browser.post(login_page(idp, browser), content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert_page_headers(response)


def test_an_interaction_that_does_not_exist_is_a_bad_request_not_an_error(idp: Provider) -> None:
    with idp.browser() as browser:
        assert browser.get("/idp/interaction/nope").status_code == 400
        response = browser.post("/idp/interaction/nope/login", data={"email": "a@b.c", "password": "x"})
        assert response.status_code == 400
        assert_page_headers(response)


@pytest.mark.parametrize(("method", "path", "data"), [
    ("GET", "/idp/auth?client_id=nobody&response_type=code", None),
    ("GET", "/idp/auth?client_id=gateway&response_type=code&redirect_uri=https://evil.example/cb", None),
    ("POST", "/idp/token", {"grant_type": "authorization_code", "code": "made-up"}),
    ("POST", "/idp/device/auth", {"client_id": "nobody"}),
    ("POST", "/idp/device", {"user_code": "BCDF-GHJK"}),
    ("GET", "/idp/interaction/%ZZ", None),
    ("GET", "/idp/setup/%ZZ", None),
    ("POST", "/idp/session/end/confirm", {"logout": "yes"}),
])
def test_bad_requests_to_any_endpoint_get_a_client_error(idp: Provider, method: str, path: str,
                                                         data: dict[str, str] | None) -> None:
    with idp.browser() as browser:
        response = browser.request(method, path, data=data)
    if path == "/idp/device":  # the code form without the session it came with: start over at the code page
        assert (response.status_code, response.headers["location"]) == (303, "/idp/device")
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert "evil.example" not in response.headers.get("location", "")
    if response.headers.get("content-type", "").startswith("text/html"):
        assert_page_headers(response)


def test_pages_escape_what_they_echo(idp: Provider) -> None:
    _, challenge = pkce_pair()
    with idp.browser() as browser:
        start = browser.get("/idp/auth", params={
            "client_id": "gateway", "response_type": "code", "scope": "openid", "redirect_uri": idp.redirect_uri(),
            "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": '"><script>x</script>'})
        page = browser.get(start.headers["location"])
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&#34;&#62;&#60;script&#62;" in page.text
    assert_page_headers(page)


# -- the process ---------------------------------------------------------------------------------------------


def test_a_restarted_provider_publishes_retired_keys_signs_with_current_ones_and_stops_cleanly(idp: Provider) -> None:
    """A second provider: its JWKS file lists retired keys first, a stale socket file is in its way, and the
    store holds an expired row."""
    env = idp.env
    fresh = json.loads(new_jwks())["keys"]
    retired = [{**key, "retired_at": int(time.time()) - 60} for key in json.loads(new_jwks())["keys"]]
    jwks_file = env.base / "rotated_jwks"
    jwks_file.write_text(json.dumps({"keys": [*retired, *fresh]}))
    jwks_file.chmod(0o600)
    socket_path = env.base / "second" / "identity.sock"
    socket_path.parent.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    config = {**idp.config, "jwks_file": str(jwks_file),
              "listen": {**idp.config["listen"], "port": free_port(), "socket": str(socket_path)}}
    idp.sql("INSERT INTO identity.oidc_store (model, id, payload, expires_at) VALUES"
            " ('Session', 'long-gone', '{}', now() - interval '1 minute'),"
            " ('Session', 'still-good', '{}', now() + interval '1 hour')")
    second = start_provider(env, config, name="identity-second")
    try:
        assert socket_path.stat().st_mode & 0o777 == 0o660
        # Expired rows are pruned at start (and every ten minutes).
        deadline = time.monotonic() + 5
        while idp.sql("SELECT 1 FROM identity.oidc_store WHERE id = 'long-gone'") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert idp.sql("SELECT id FROM identity.oidc_store WHERE id IN ('long-gone', 'still-good')") == [
            ("still-good",)]
        published = jwks(second)["keys"]
        assert {k["kid"] for k in published} == {k["kid"] for k in retired + fresh}
        _, email = second.add_account("max")
        code, verifier, _ = second.code_flow(email)
        tokens = second.exchange(code, verifier).json()
        fresh_kids = {k["kid"] for k in fresh}
        assert jwt.get_unverified_header(tokens["access_token"])["kid"] in fresh_kids
        assert jwt.get_unverified_header(tokens["id_token"])["kid"] in fresh_kids
        idp.secrets_seen.extend(second.secrets_seen)
    finally:
        started = time.monotonic()
        os.kill(second.process.pid, signal.SIGTERM)
        assert second.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert not socket_path.exists()


def test_the_log_has_one_line_per_request_and_no_secret(idp: Provider) -> None:
    text = idp.log_text()
    assert "method=POST path=/idp/token status=200" in text
    assert "path=/idp/setup/- " in text
    forbidden = [PASSWORD, idp.client_secret(), *idp.secrets_seen]
    assert len(idp.secrets_seen) > 10
    for secret in forbidden:
        assert secret not in text
    # The second provider's log too.
    second = idp.env.base / "identity-second.log"
    if second.exists():
        for secret in forbidden:
            assert secret not in second.read_text()
