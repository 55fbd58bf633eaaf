"""Authentication: only tokens signed by this tenant's key, for this tenant, currently valid, are accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from appliance.gateway.core.security import Keyring, TokenError, load_private_key, rotate_signing_key
from tests.gateway.conftest import Stack
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.stack import make_tenant


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(stack: Stack, subject: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": stack.env.keyring().issuer, "aud": stack.env.tenant.id, "sub": str(subject),
            "iat": now, "nbf": now, "exp": now + 600}
    base.update(overrides)
    return base


def signed(stack: Stack, payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    key = load_private_key(stack.env.tenant.read_secret("jwt_signing_key"))
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": stack.env.keyring().current_kid,
                                                                  **(headers or {})})


def call_me(stack: Stack, token: str) -> httpx.Response:
    return httpx.get(stack.url + "/api/me", headers={"Authorization": f"Bearer {token}"})


def assert_refused(response: httpx.Response, code: str = "invalid_token") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    assert "houses" not in response.text


def test_a_valid_token_authenticates_its_subject(stack: Stack) -> None:
    subject = uuid.uuid4()
    response = call_me(stack, stack.env.token(subject))
    assert response.status_code == 200
    assert response.json()["principal_id"] == str(subject)


def test_missing_and_malformed_tokens(stack: Stack) -> None:
    response = httpx.get(stack.url + "/api/me")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    for garbage in ("x", "a.b.c", "Basic abc", "e30.e30.", "ey" * 3000):
        assert_refused(call_me(stack, garbage))


def test_alg_none_is_refused(stack: Stack) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": stack.env.keyring().current_kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(stack, uuid.uuid4())).encode())}."
    assert_refused(call_me(stack, token))


def test_hs256_signed_with_the_public_key_is_refused(stack: Stack) -> None:
    """Algorithm confusion: an attacker knows the public key and uses it as an HMAC secret."""
    private = load_private_key(stack.env.tenant.read_secret("jwt_signing_key"))
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": stack.env.keyring().current_kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims(stack, uuid.uuid4())).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_refused(call_me(stack, f"{signing_input}.{b64(signature)}"))


def test_another_tenants_token_is_refused(stack: Stack, tmp_path: Path) -> None:
    globex = make_tenant(tmp_path, tenant_id="globex", slot=2)
    subject = uuid.uuid4()
    # Its own token (its key, its issuer, its audience).
    assert_refused(call_me(stack, globex.token(subject)))
    # Its key, dressed up with this tenant's claims.
    other_key = load_private_key(globex.tenant.read_secret("jwt_signing_key"))
    forged = jwt.encode(claims(stack, subject), other_key, algorithm="EdDSA",
                        headers={"kid": globex.keyring().current_kid})
    assert_refused(call_me(stack, forged))
    # Its key, claiming to be this tenant's key id: the signature does not verify.
    forged = jwt.encode(claims(stack, subject), other_key, algorithm="EdDSA",
                        headers={"kid": stack.env.keyring().current_kid})
    assert_refused(call_me(stack, forged))


# Offsets from the moment the test runs, never instants fixed at collection: on a fresh machine the gateway
# tests start more than ten minutes after pytest imports this module (issue 15).
@pytest.mark.parametrize(("claim", "seconds_from_now"), [("exp", -60), ("nbf", 600), ("iat", 600)])
def test_tokens_outside_their_time_window_are_refused(stack: Stack, claim: str, seconds_from_now: int) -> None:
    instant = int(time.time()) + seconds_from_now
    assert_refused(call_me(stack, signed(stack, claims(stack, uuid.uuid4(), **{claim: instant}))))


@pytest.mark.parametrize("overrides", [
    {"aud": "globex"},
    {"iss": "http://127.0.0.1:1"},
    {"sub": "not-a-uuid"},
    {"sub": "../../etc/passwd"},
])
def test_invalid_claims_are_refused(stack: Stack, overrides: dict[str, Any]) -> None:
    assert_refused(call_me(stack, signed(stack, claims(stack, uuid.uuid4(), **overrides))))


def test_missing_required_claims_are_refused(stack: Stack) -> None:
    for missing in ("exp", "sub", "aud", "iss", "iat"):
        payload = claims(stack, uuid.uuid4())
        del payload[missing]
        assert_refused(call_me(stack, signed(stack, payload)))


def test_unknown_kid_is_refused(stack: Stack) -> None:
    assert_refused(call_me(stack, signed(stack, claims(stack, uuid.uuid4()), {"kid": "nope"})))


def test_refused_tokens_are_audited(stack: Stack) -> None:
    call_me(stack, signed(stack, claims(stack, uuid.uuid4(), exp=int(time.time()) - 60)))
    stack.flush_audit()
    rows = stack.sql("SELECT detail->>'reason' FROM audit.events WHERE action = 'auth.token_refused' "
                     "ORDER BY seq DESC LIMIT 1")
    assert rows == [("expired",)]


def test_key_rotation_keeps_old_tokens_for_the_grace_period(stack: Stack) -> None:
    subject = uuid.uuid4()
    old_token = stack.env.token(subject)
    old_kid, new_kid = rotate_signing_key(stack.env.tenant)
    assert old_kid != new_kid
    time.sleep(1.1)  # the gateway re-reads key files at most once a second
    assert call_me(stack, old_token).status_code == 200
    new_token = stack.env.token(subject)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert call_me(stack, new_token).status_code == 200
    # Past the grace period the old key is refused (a keyring with no grace sees the same files).
    strict = Keyring(stack.env.tenant.secret_path("jwt_signing_key"),
                     stack.env.tenant.secrets_dir / "jwt_previous_keys.json",
                     stack.env.keyring().issuer, stack.env.tenant.id, grace_s=0)
    with pytest.raises(TokenError) as refused:
        strict.verify(old_token)
    assert refused.value.reason == "retired_key"
    assert strict.verify(new_token).subject == subject


def test_api_key_exchange_and_revocation(stack: Stack) -> None:
    alice = stack.user()
    created = alice.post("/api/api_keys", {"name": "laptop"})
    assert created.status_code == 201, created.text
    key = created.json()["data"]["key"]
    key_id = created.json()["data"]["id"]
    assert "key_hash" not in created.text
    stored = stack.sql("SELECT key_hash FROM public.api_keys WHERE id = %s", [key_id])
    assert bytes(stored[0][0]) == hashlib.sha256(key.encode()).digest()
    # Listed without the key.
    listed = alice.get("/api/api_keys").json()["data"]
    assert [k["id"] for k in listed] == [key_id] and key not in json.dumps(listed)

    anonymous = stack.anonymous()
    exchanged = anonymous.post("/api/auth/token", json={"api_key": key})
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["access_token"]
    assert call_me(stack, token).json()["principal_id"] == str(alice.id)

    for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), "apk_" + "0" * 32 + "_" + "x" * 43, "nonsense", ""):
        refused = anonymous.post("/api/auth/token", json={"api_key": bad})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

    assert alice.delete(f"/api/api_keys/{key_id}").status_code == 200
    assert_refused(call_me(stack, token))
    assert anonymous.post("/api/auth/token", json={"api_key": key}).status_code == 401
    stack.flush_audit()
    actions = {r[0] for r in stack.sql("SELECT action FROM audit.events WHERE subject = %s", [f"api_key:{key_id}"])}
    assert {"api_key.create", "auth.api_key_exchanged", "api_key.delete", "auth.api_key_refused"} <= actions


def test_agent_keys_act_as_the_agent(stack: Stack) -> None:
    admin = stack.user()
    house = admin.house()
    agent = admin.post("/api/agents", {"house_id": house, "name": "bot", "handler": "echo"}).json()["data"]
    outsider = stack.user()
    assert outsider.post("/api/api_keys", {"agent_id": agent["id"]}).status_code == 404
    created = admin.post("/api/api_keys", {"agent_id": agent["id"], "name": "external bot"})
    assert created.status_code == 201, created.text
    token = stack.anonymous().post("/api/auth/token", json={"api_key": created.json()["data"]["key"]}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    me = httpx.get(stack.url + "/api/me", headers=headers).json()
    assert me["principal_id"] == agent["id"] and me["principal_kind"] == "agent"
    assert me["houses"] == [{"house_id": house, "name": "house", "role": "member"}]
    thread = admin.thread(house)
    entry = httpx.post(f"{stack.url}/api/threads/{thread}/entries", headers=headers,
                       json={"id": str(uuid.uuid4()), "text": "hello from outside"})
    assert entry.status_code == 201, entry.text
    # Agents cannot create houses or mint keys for themselves.
    assert httpx.post(stack.url + "/api/houses", headers=headers, json={"name": "x"}).status_code == 403
    assert httpx.post(stack.url + "/api/api_keys", headers=headers, json={}).status_code == 403
    # Deleting the agent revokes its keys: the token stops working.
    assert admin.delete(f"/api/agents/{agent['id']}").status_code == 200
    assert httpx.get(stack.url + "/api/me", headers=headers).status_code == 401


def test_token_cli_prints_only_a_working_token(stack: Stack) -> None:
    subject = uuid.uuid4()
    result = subprocess.run(
        [str(APPLIANCE_BIN), "token", "issue", stack.env.tenant.id, "--subject", str(subject), "--ttl", "120"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "APPLIANCE_CONFIG_DIR": str(stack.env.config_dir)},
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 120 and payload["sub"] == str(subject)
    assert call_me(stack, token).json()["principal_id"] == str(subject)
    rows = stack.sql("SELECT actor FROM audit.events WHERE action = 'operator.token_issued' AND subject = %s",
                     [f"principal:{subject}"])
    assert rows == [("operator",)]
    bad = subprocess.run(
        [str(APPLIANCE_BIN), "token", "issue", stack.env.tenant.id, "--subject", "alice; rm -rf /"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "APPLIANCE_CONFIG_DIR": str(stack.env.config_dir)},
    )
    assert bad.returncode == 2 and bad.stdout == ""
