"""The identity plane's pure parts: issuer settings, where a login may return to, claims -> house roles,
refresh tokens' form, the provider's runtime config and signing keys, and account input checks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from appliance.config import ConfigError, RoleGrant, host_config
from appliance.gateway.identity import login, sessions
from appliance.gateway.identity.principals import desired_roles
from appliance.identity import accounts, keys, provider

HOUSE_A = "6f0c3a52-8d0e-4b7e-9a39-0a5c1b2d3e4f"
HOUSE_B = "0b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b"


def _tenant(**identity: Any):  # type: ignore[no-untyped-def]
    tenant: dict[str, Any] = {"slot": 1}
    if identity:
        tenant["identity"] = identity
    return host_config("@local", {"tenants": {"acme": tenant}}).tenant("acme")


def _issuer(**overrides: Any) -> dict[str, Any]:
    return {"name": "corp", "issuer": "https://sso.example.com/realms/acme", "client_id": "acme-app",
            "client_secret_file": "/etc/appliance/corp.secret", **overrides}


def test_embedded_provider_is_served_under_the_tenants_own_hostname() -> None:
    acme = _tenant()
    assert provider.issuer_url(acme) == "https://acme.appliance.internal/idp"
    assert provider.internal_url(acme) == f"http://127.0.0.1:{acme.port('identity')}/idp"
    assert acme.port("identity") == 20015
    assert provider.callback_urls(acme) == ["https://acme.appliance.internal/api/auth/callback"]
    config = provider.runtime_config(acme)
    assert config["issuer"] == "https://acme.appliance.internal/idp"
    assert config["resource"] == "https://acme.appliance.internal"
    # Paths of secret files, never their values.
    text = json.dumps(config)
    assert str(acme.secret_path("identity_jwks")) in text and "BEGIN" not in text
    assert {c["client_id"] for c in config["clients"]} == {"gateway", "cli"}
    # A login's redirects lead to the tenant's origins, and to the apps' it allows.
    assert config["form_action_origins"] == ["https://acme.appliance.internal"]
    allowing = host_config("@local", {"tenants": {"acme": {"slot": 1, "gateway": {
        "cors_origins": ["https://app.example.com"]}}}}).tenant("acme")
    assert provider.runtime_config(allowing)["form_action_origins"] == [
        "https://acme.appliance.internal", "https://app.example.com"]


def test_issuer_settings_refuse_what_would_weaken_verification() -> None:
    assert _tenant(issuers=[_issuer()]).identity.issuers[0].expected_audience == "acme-app"
    for bad, why in (
        (_issuer(algorithms=["HS256"]), "algorithms"),
        (_issuer(algorithms=["none"]), "algorithms"),
        (_issuer(issuer="http://sso.example.com"), "issuer"),
        (_issuer(name="local"), "embedded provider"),
        (_issuer(client_secret_file="relative/path"), "client_secret_file"),
        (_issuer(client_secret="inline"), "client_secret"),
        (_issuer(roles=[{"claim": "groups", "value": "x", "house": "not-a-uuid", "role": "admin"}]), "house"),
        (_issuer(roles=[{"claim": "groups", "value": "x", "house": HOUSE_A, "role": "root"}]), "role"),
    ):
        with pytest.raises(ConfigError, match=why):
            _tenant(issuers=[bad])
    with pytest.raises(ConfigError, match="twice"):
        _tenant(issuers=[_issuer(), _issuer(issuer="https://other.example.com")])


@pytest.mark.parametrize("return_to", [
    "https://evil.example.com/", "//evil.example.com/x", "https://acme.appliance.internal.evil.com/",
    "https://user@acme.appliance.internal/", "javascript:alert(1)", "/\\evil.example.com", "https:evil.example.com",
    "https://globex.appliance.internal/", "ftp://acme.appliance.internal/", "/x\r\nSet-Cookie: a=b", "x" * 3000,
])
def test_return_to_may_only_name_the_tenants_own_origins(return_to: str) -> None:
    acme = _tenant()
    with pytest.raises(login.LoginError) as refused:
        login.checked_return_to(acme, "https://acme.appliance.internal", return_to)
    assert refused.value.status == 400


def test_return_to_accepts_paths_and_allowed_origins() -> None:
    acme = host_config("@local", {"tenants": {"acme": {"slot": 1, "gateway": {
        "cors_origins": ["https://app.example.com"]}}}}).tenant("acme")
    origin = "https://acme.appliance.internal"
    assert login.checked_return_to(acme, origin, None) == origin + "/"
    assert login.checked_return_to(acme, origin, "/app?x=1#y") == origin + "/app?x=1#y"
    assert login.checked_return_to(acme, origin, "https://app.example.com/after") == "https://app.example.com/after"
    assert login.checked_return_to(acme, origin, "https://ACME.appliance.internal/a") == \
        "https://ACME.appliance.internal/a"
    assert login.request_origin(acme, "https", "acme.appliance.internal") == origin
    # A Host header the tenant does not own never becomes a redirect target.
    assert login.request_origin(acme, "https", "evil.example.com") == acme.url


def test_claims_give_the_highest_matching_role_and_manage_only_named_houses() -> None:
    grants = (
        RoleGrant(claim="groups", value="staff", house=HOUSE_A, role="member"),
        RoleGrant(claim="groups", value="admins", house=HOUSE_A, role="admin"),
        RoleGrant(claim="dept", value="ops", house=HOUSE_B, role="owner"),
    )
    a, b = uuid.UUID(HOUSE_A), uuid.UUID(HOUSE_B)
    assert desired_roles(grants, {"groups": ["staff", "admins"]}) == {a: "admin", b: None}
    assert desired_roles(grants, {"groups": ["staff"], "dept": "ops"}) == {a: "member", b: "owner"}
    assert desired_roles(grants, {}) == {a: None, b: None}
    assert desired_roles(grants, {"groups": "admins"}) == {a: "admin", b: None}
    assert desired_roles((), {"groups": ["admins"]}) == {}


def test_refresh_tokens_name_their_session_and_nothing_else_parses() -> None:
    session = uuid.uuid4()
    token = sessions._new_token(session)
    assert sessions.parse(token) == session
    for bad in (None, "", token + "x", token.replace("rt_", "rx_"), "rt_" + "0" * 32 + "_short", token[:-1] + "!"):
        assert sessions.parse(bad) is None


def test_signing_keys_rotate_new_first_and_retire_the_old_for_a_while() -> None:
    first = keys.new_jwks()
    document = json.loads(first)
    assert [k["alg"] for k in document["keys"]] == ["EdDSA", "RS256"]
    assert all("d" in k and k["use"] == "sig" for k in document["keys"])
    rotated, added, dropped = keys.rotated_jwks(first, now=1000.0)
    kids = keys.public_kids(rotated)
    assert kids[:2] == added and kids[2:] == keys.public_kids(first) and dropped == []
    assert all(k["retired_at"] == 1000 for k in json.loads(rotated)["keys"][2:])
    later, added_later, dropped_later = keys.rotated_jwks(rotated, now=1000.0 + keys.RETIRED_KEEP_S + 1)
    assert dropped_later == keys.public_kids(first) and keys.public_kids(later) == added_later + added


@pytest.mark.parametrize("email", ["", "no-at-sign", "a@", "@b", "a b@c.d", "x" * 250 + "@e.com"])
def test_account_emails_are_checked(email: str) -> None:
    with pytest.raises(accounts.AccountError):
        accounts.normalize_email(email)


def test_passwords_are_checked_and_hashed_with_argon2id_at_the_tenants_cost() -> None:
    acme = _tenant(argon2_memory_kib=8192, argon2_time_cost=1)
    assert accounts.normalize_email("  Bob@Example.COM ") == "bob@example.com"
    with pytest.raises(accounts.AccountError, match="at least"):
        accounts.hash_password(acme, "short")
    with pytest.raises(accounts.AccountError, match="at most"):
        accounts.hash_password(acme, "é" * 600)
    hashed = accounts.hash_password(acme, "correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert accounts.password_hasher(acme).verify(hashed, "correct horse battery")
