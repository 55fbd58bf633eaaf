"""Cross-tenant and cross-house attacks, path traversal and SQL meta-characters: refused, nothing leaked."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Stack, User
from tests.support.stack import make_tenant

NASTY = [
    "'; DROP TABLE houses; --",
    "\" OR 1=1 --",
    "x' OR 'a'='a",
    "$1",
    "%s %(x)s {0}",
    "\\'\\\\",
    "house_id IN (SELECT id FROM houses)",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "ünï©ødé ✓ 𝄞",
    "\u2028\u2029\t\r\n",
]


@pytest.fixture(scope="module")
def victims(stack: Stack) -> dict[str, Any]:
    owner = stack.user()
    house = owner.house("victim house")
    thread = owner.post("/api/threads", {"house_id": house, "title": "TOP SECRET TITLE"}).json()["data"]["id"]
    owner.post(f"/api/threads/{thread}/entries", {"id": str(uuid.uuid4()), "text": "TOP SECRET ENTRY"})
    ids = {"house": house, "thread": thread}
    for path, body in (("/api/agents", {"name": "secretagent", "handler": "echo"}),
                       ("/api/environments", {"name": "secretenv"}),
                       ("/api/configs", {"key": "secretkey", "value": "TOP SECRET VALUE"}),
                       ("/api/secrets", {"name": "secretname", "value": "TOP SECRET PASSWORD"}),
                       ("/api/invites", {})):
        response = owner.post(path, {"house_id": house, **body})
        assert response.status_code == 201, response.text
        ids[path.rsplit("/", 1)[1].rstrip("s")] = response.json()["data"]["id"]
    ids["member"] = str(stack.sql("SELECT id FROM public.members WHERE house_id = %s", [house])[0][0])
    return ids


def assert_not_leaked(response: httpx.Response) -> None:
    assert "TOP SECRET" not in response.text and "victim" not in response.text


def test_another_houses_thread_is_not_found(stack: Stack, victims: dict[str, Any]) -> None:
    attacker = stack.user()
    attacker.house("attacker house")
    thread = victims["thread"]
    for response in (
        attacker.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}),
        attacker.get(f"/api/threads/{thread}/stream", params={"offset": "-1", "live": "long-poll"}),
        attacker.post(f"/api/threads/{thread}/entries", {"id": str(uuid.uuid4()), "text": "injected"}),
        attacker.patch(f"/api/threads/{thread}", {"title": "pwned"}),
        attacker.delete(f"/api/threads/{thread}"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == {"code": "not_found", "message": "not found"}
        assert_not_leaked(response)
    assert stack.sql("SELECT title, deleted_at FROM public.threads WHERE id = %s", [thread]) == [
        ("TOP SECRET TITLE", None)]
    stack.flush_audit()
    refused = stack.sql("SELECT detail->>'attempted' FROM audit.events WHERE action = 'auth.refused' "
                        "AND actor = %s AND house_id = %s", [str(attacker.id), victims["house"]])
    assert {r[0] for r in refused} >= {"thread.read", "thread.entry.append", "thread.update", "thread.delete"}


@pytest.mark.parametrize(("kind", "body"), [
    ("agents", {"name": "renamed"}), ("environments", {"description": "x"}), ("configs", {"value": 1}),
    ("secrets", {"value": "x"}), ("members", {"role": "owner"}), ("houses", {"name": "x"}),
])
def test_another_houses_objects_cannot_be_changed(stack: Stack, victims: dict[str, Any], kind: str,
                                                  body: dict[str, Any]) -> None:
    attacker = stack.user()
    object_id = victims["house" if kind == "houses" else kind.rstrip("s")]
    for response in (attacker.patch(f"/api/{kind}/{object_id}", body), attacker.delete(f"/api/{kind}/{object_id}")):
        assert response.status_code == 404, response.text
        assert_not_leaked(response)


def test_another_houses_id_in_a_body_is_refused(stack: Stack, victims: dict[str, Any]) -> None:
    attacker = stack.user()
    house = victims["house"]
    for path, body in (("/api/threads", {}), ("/api/agents", {"name": "x", "handler": "echo"}),
                       ("/api/members", {"principal_id": str(attacker.id), "role": "owner"}),
                       ("/api/invites", {}), ("/api/configs", {"key": "k", "value": 1})):
        response = attacker.post(path, {"house_id": house, **body})
        assert response.status_code == 404, (path, response.text)
    assert attacker.post("/api/api_keys", {"agent_id": victims["agent"]}).status_code == 404
    assert attacker.delete(f"/api/invites/{victims['invite']}").status_code == 404
    assert stack.sql("SELECT count(*) FROM public.members WHERE principal_id = %s", [attacker.id]) == [(0,)]


def test_another_tenants_token_reads_nothing(stack: Stack, victims: dict[str, Any], tmp_path: Path) -> None:
    globex = make_tenant(tmp_path, tenant_id="globex", slot=2)
    owner_id = stack.sql("SELECT created_by FROM public.houses WHERE id = %s", [victims["house"]])[0][0]
    # Even a token for the very principal who owns the house, if another tenant's key signed it.
    token = globex.token(owner_id)
    response = httpx.get(f"{stack.url}/api/threads/{victims['thread']}/stream",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert_not_leaked(response)


@pytest.mark.parametrize("path", [
    "/api/threads/..%2F..%2Fhouses/stream",
    "/api/threads/../houses/stream",
    "/api/threads/%2e%2e/stream",
    "/api/threads/thread-x/stream",
    "/api/threads/00000000-0000-0000-0000-000000000000%2F..%2Fx/stream",
    "/api/threads/%00/stream",
])
def test_path_traversal_in_ids_is_refused(stack: Stack, path: str) -> None:
    user = stack.user()
    response = user.http.get(path)
    # 405: the client normalised `..` away and landed on a route that has no GET.
    assert response.status_code in (404, 405, 422), response.text
    assert "error" in response.json()


def test_path_traversal_in_entry_ids_is_refused(stack: Stack, victims: dict[str, Any]) -> None:
    user = stack.user()
    thread = user.thread(user.house())
    for bad in ("../../thread-x", "1 OR 1=1", "", "0" * 40):
        response = user.post(f"/api/threads/{thread}/entries", {"id": bad, "text": "x"})
        assert response.status_code == 422


def _free_text_fields(user: User, house: str) -> list[tuple[str, str, dict[str, Any]]]:
    thread = user.thread(house)
    return [
        ("/api/houses", "name", {}),
        ("/api/threads", "title", {"house_id": house}),
        ("/api/environments", "description", {"house_id": house, "name": f"e{uuid.uuid4().hex[:6]}"}),
        ("/api/secrets", "value", {"house_id": house, "name": f"s{uuid.uuid4().hex[:6]}"}),
        ("/api/api_keys", "name", {}),
        (f"/api/threads/{thread}/entries", "text", {"id": str(uuid.uuid4())}),
    ]


@pytest.mark.parametrize("nasty", NASTY)
def test_sql_meta_characters_in_free_text_are_stored_verbatim(stack: Stack, nasty: str) -> None:
    user = stack.user()
    house = user.house()
    for path, field, base in _free_text_fields(user, house):
        body = {**base, field: nasty}
        if path.endswith("/entries"):
            body["id"] = str(uuid.uuid4())
        response = user.post(path, body)
        assert response.status_code == 201, (path, response.text)
        if field not in ("value",) and not path.endswith("/entries"):
            assert response.json()["data"][field] == nasty
    assert stack.sql("SELECT count(*) > 0 FROM public.houses") == [(True,)]
    titles = stack.sql("SELECT title FROM public.threads WHERE house_id = %s AND title <> 't'", [house])
    assert titles == [(nasty,)]
    config = user.post("/api/configs", {"house_id": house, "key": "k", "value": {nasty: [nasty]}})
    assert config.status_code == 201 and config.json()["data"]["value"] == {nasty: [nasty]}


@pytest.mark.parametrize("nasty", NASTY)
def test_sql_meta_characters_in_names_and_ids_are_refused(stack: Stack, nasty: str) -> None:
    user = stack.user()
    house = user.house()
    for path, body in (
        ("/api/agents", {"house_id": house, "name": nasty, "handler": "echo"}),
        ("/api/agents", {"house_id": house, "name": "ok", "handler": nasty}),
        ("/api/environments", {"house_id": house, "name": nasty}),
        ("/api/configs", {"house_id": house, "key": nasty, "value": 1}),
        ("/api/secrets", {"house_id": house, "name": nasty, "value": "v"}),
        ("/api/members", {"house_id": nasty, "principal_id": str(uuid.uuid4())}),
        ("/api/members", {"house_id": house, "principal_id": nasty}),
        ("/api/members", {"house_id": house, "principal_id": str(uuid.uuid4()), "role": nasty}),
        ("/api/threads", {"house_id": house, "id": nasty}),
        ("/api/invites", {"house_id": house, "role": nasty}),
    ):
        response = user.post(path, body)
        assert response.status_code == 422, (path, body, response.text)
    thread = user.thread(house)  # the caller's own thread: only the parameters can be refused
    for query in ({"offset": nasty}, {"live": nasty}, {"cursor": nasty}):
        assert user.get(f"/api/threads/{thread}/stream", params=query).status_code == 422, query
    exchange = stack.anonymous().post("/api/auth/token", json={"api_key": nasty})
    assert exchange.status_code == 401
    invite = user.post("/api/invites/accept", {"code": nasty})
    assert invite.status_code == 404


@pytest.mark.parametrize("value", [
    {"a": "nul\u0000"}, {"nul\u0000key": 1}, "\ud800", {"deep": json.loads("[" * 40 + "1" + "]" * 40)},
])
def test_json_values_without_a_stored_form_are_refused(stack: Stack, value: Any) -> None:
    user = stack.user()
    house = user.house()
    # Sent as ASCII JSON with \u escapes, the way a hostile client would smuggle NULs and lone surrogates.
    body = json.dumps({"house_id": house, "key": "k", "value": value})
    response = user.http.post("/api/configs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text


def test_nan_and_infinity_are_refused(stack: Stack) -> None:
    user = stack.user()
    house = user.house()
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = f'{{"house_id": "{house}", "key": "k", "value": {literal}}}'
        response = user.http.post("/api/configs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text


def test_an_agent_cannot_take_over_a_users_principal_id(stack: Stack) -> None:
    """An admin creating an agent whose client-chosen id is an existing user's would let the agent's keys act
    as that user: refused."""
    admin, victim = stack.user(), stack.user()
    victim.house()
    house = admin.house()
    response = admin.post("/api/agents", {"id": str(victim.id), "house_id": house, "name": "evil", "handler": "echo"})
    assert response.status_code == 409
    assert stack.sql("SELECT count(*) FROM public.agents WHERE id = %s", [victim.id]) == [(0,)]
