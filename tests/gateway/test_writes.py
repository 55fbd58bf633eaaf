"""Writes: validation, role checks, one transaction with the audit row, txid as a number, soft deletes, and
the error shape for everything that goes wrong."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from appliance.gateway.core.security import decrypt_secret
from tests.gateway.conftest import Stack, build_stack
from tests.support.pg import PgCluster, pg_cluster


def xmin(stack: Stack, table: str, row_id: str) -> int:
    rows = stack.sql(f"SELECT xmin::text::bigint FROM public.{table} WHERE id = %s", [row_id])
    return int(rows[0][0])


def audit_actions(stack: Stack, subject: str) -> list[str]:
    return [r[0] for r in stack.sql("SELECT action FROM audit.events WHERE subject = %s ORDER BY seq", [subject])]


def test_create_update_delete_return_the_txid_of_the_write(stack: Stack) -> None:
    alice = stack.user()
    client_id = str(uuid.uuid4())
    created = alice.post("/api/houses", {"id": client_id, "name": "Home"})
    assert created.status_code == 201
    body = created.json()
    assert body["data"]["id"] == client_id and isinstance(body["txid"], int)
    assert body["txid"] == xmin(stack, "houses", client_id)
    renamed = alice.patch(f"/api/houses/{client_id}", {"name": "Home 2"}).json()
    assert renamed["data"]["name"] == "Home 2" and renamed["txid"] == xmin(stack, "houses", client_id)
    assert renamed["txid"] != body["txid"]
    again = alice.post("/api/houses", {"id": client_id, "name": "dup"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_exists"
    deleted = alice.delete(f"/api/houses/{client_id}").json()
    assert deleted["data"]["deleted_at"] is not None and deleted["txid"] == xmin(stack, "houses", client_id)
    assert stack.sql("SELECT count(*) FROM public.houses WHERE id = %s", [client_id]) == [(1,)]
    assert alice.patch(f"/api/houses/{client_id}", {"name": "x"}).status_code == 404
    assert audit_actions(stack, f"house:{client_id}")[:3] == ["house.create", "house.update", "house.delete"]


@pytest.mark.parametrize(("path", "create", "update"), [
    ("/api/environments", {"name": "prod", "description": "live"}, {"description": "production"}),
    ("/api/agents", {"name": "echo", "handler": "echo", "config": {"greeting": "hi", "n": 1.5}},
     {"config": {"greeting": "hello"}}),
    ("/api/threads", {"title": "first"}, {"title": "renamed"}),
    ("/api/configs", {"key": "theme", "value": {"dark": True}}, {"value": [1, 2, 3]}),
])
def test_each_resource_round_trips(stack: Stack, path: str, create: dict[str, object],
                                   update: dict[str, object]) -> None:
    alice = stack.user()
    house = alice.house()
    table = path.rsplit("/", 1)[1]
    created = alice.post(path, {"house_id": house, **create})
    assert created.status_code == 201, created.text
    row = created.json()["data"]
    assert row["house_id"] == house and created.json()["txid"] == xmin(stack, table, row["id"])
    updated = alice.patch(f"{path}/{row['id']}", update)
    assert updated.status_code == 200, updated.text
    for key, value in update.items():
        assert updated.json()["data"][key] == value
    deleted = alice.delete(f"{path}/{row['id']}")
    assert deleted.status_code == 200 and deleted.json()["data"]["deleted_at"]
    assert alice.delete(f"{path}/{row['id']}").status_code == 404
    kind = table.rstrip("s")
    assert audit_actions(stack, f"{kind}:{row['id']}") == [f"{kind}.create", f"{kind}.update", f"{kind}.delete"]


def test_roles_decide_who_may_write(stack: Stack) -> None:
    owner, admin, member, outsider = (stack.user() for _ in range(4))
    house = owner.house()
    for user, role in ((admin, "admin"), (member, "member")):
        added = owner.post("/api/members", {"house_id": house, "principal_id": str(user.id), "role": role})
        assert added.status_code == 201, added.text
    # Members write threads but not agents; outsiders learn nothing.
    assert member.post("/api/threads", {"house_id": house}).status_code == 201
    forbidden = member.post("/api/agents", {"house_id": house, "name": "a", "handler": "echo"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    hidden = outsider.post("/api/threads", {"house_id": house})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert admin.post("/api/agents", {"house_id": house, "name": "a", "handler": "echo"}).status_code == 201
    # Admins cannot make owners or touch them; owners can; the last owner stays.
    promote = admin.post("/api/members", {"house_id": house, "principal_id": str(uuid.uuid4()), "role": "owner"})
    assert promote.status_code == 403
    owner_row = stack.sql("SELECT id FROM public.members WHERE house_id = %s AND role = 'owner'", [house])[0][0]
    assert admin.delete(f"/api/members/{owner_row}").status_code == 403
    last = owner.patch(f"/api/members/{owner_row}", {"role": "member"})
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_owner"
    assert member.patch(f"/api/houses/{house}", {"name": "mine"}).status_code == 403
    assert admin.delete(f"/api/houses/{house}").status_code == 403
    # Anyone may leave.
    member_row = stack.sql("SELECT id FROM public.members WHERE principal_id = %s", [member.id])[0][0]
    assert member.delete(f"/api/members/{member_row}").status_code == 200
    assert member.post("/api/threads", {"house_id": house}).status_code == 404
    stack.flush_audit()
    refusals = stack.sql("SELECT detail->>'attempted', detail->>'reason' FROM audit.events "
                         "WHERE action = 'auth.refused' AND house_id = %s ORDER BY seq", [house])
    assert ("agent.create", "needs_admin") in refusals
    assert ("thread.create", "not_a_member") in refusals


def test_environment_of_another_house_is_refused(stack: Stack) -> None:
    alice = stack.user()
    mine, other = alice.house(), alice.house()
    environment = alice.post("/api/environments", {"house_id": other, "name": "e"}).json()["data"]["id"]
    response = alice.post("/api/configs", {"house_id": mine, "environment_id": environment, "key": "k", "value": 1})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_environment"


def test_secrets_are_encrypted_at_rest_and_never_returned(stack: Stack) -> None:
    alice = stack.user()
    house = alice.house()
    plaintext = "s3cr3t-" + uuid.uuid4().hex
    created = alice.post("/api/secrets", {"house_id": house, "name": "API_TOKEN", "value": plaintext})
    assert created.status_code == 201 and plaintext not in created.text and "value" not in created.json()["data"]
    secret_id = created.json()["data"]["id"]
    stored = bytes(stack.sql("SELECT value FROM public.secrets WHERE id = %s", [secret_id])[0][0])
    assert plaintext.encode() not in stored
    key = stack.env.tenant.read_secret("secrets_encryption_key")
    assert decrypt_secret(key, uuid.UUID(secret_id), uuid.UUID(house), stored) == plaintext
    with pytest.raises(ValueError):
        decrypt_secret(key, uuid.uuid4(), uuid.UUID(house), stored)  # bound to its row
    updated = alice.patch(f"/api/secrets/{secret_id}", {"value": "new"})
    assert updated.status_code == 200 and "new" not in updated.text
    stack.flush_audit()
    assert plaintext not in str(stack.sql("SELECT detail FROM audit.events WHERE house_id = %s", [house]))


def test_invites_make_members_once(stack: Stack) -> None:
    owner, guest, latecomer = stack.user(), stack.user(), stack.user()
    house = owner.house()
    invite = owner.post("/api/invites", {"house_id": house, "role": "member"})
    assert invite.status_code == 201
    code = invite.json()["data"]["code"]
    assert "code_hash" not in invite.json()["data"]
    accepted = guest.post("/api/invites/accept", {"code": code})
    assert accepted.status_code == 201 and accepted.json()["data"]["role"] == "member"
    assert guest.post("/api/threads", {"house_id": house}).status_code == 201
    assert latecomer.post("/api/invites/accept", {"code": code}).status_code == 404
    assert latecomer.post("/api/invites/accept", {"code": code[:-2] + "xx"}).status_code == 404
    revoked = owner.post("/api/invites", {"house_id": house}).json()["data"]
    assert owner.delete(f"/api/invites/{revoked['id']}").status_code == 200
    assert latecomer.post("/api/invites/accept", {"code": revoked["code"]}).status_code == 404


def test_errors_always_have_the_error_shape(stack: Stack) -> None:
    alice = stack.user()
    cases: list[tuple[httpx.Response, int, str]] = [
        (alice.get("/api/nothing-here"), 404, "not_found"),
        (alice.http.put("/api/houses"), 405, "method_not_allowed"),
        (alice.post("/api/houses", {"name": ""}), 422, "invalid_request"),
        (alice.post("/api/houses", {"name": "x", "extra": 1}), 422, "invalid_request"),
        (alice.http.post("/api/houses", content=b"{not json", headers={"content-type": "application/json"}),
         422, "invalid_request"),
        (alice.post("/api/houses", ["a", "list"]), 422, "invalid_request"),
        (alice.patch("/api/houses/not-a-uuid", {"name": "x"}), 422, "invalid_request"),
        (alice.post("/api/houses", {"name": "nul\x00byte"}), 422, "invalid_request"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["error"]["code"] == code
        assert set(response.json()["error"]) == {"code", "message"}


def test_oversized_bodies_get_413(stack: Stack) -> None:
    alice = stack.user()
    limit = stack.env.tenant.gateway.max_body_bytes
    big = alice.post("/api/houses", {"name": "x" * (limit + 10)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536
        yield b'"}'

    chunked = alice.http.post("/api/houses", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "payload_too_large"


def test_health_readiness_and_openapi(stack: Stack) -> None:
    anonymous = stack.anonymous()
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    # No sync engine runs in this stack: not ready, and the answer says which dependency is missing.
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"postgres": True, "sync": False, "streams": True}
    assert ready.json()["error"]["code"] == "not_ready"
    spec = anonymous.get("/openapi.json").json()
    assert "/api/threads/{thread_id}/entries" in spec["paths"] and "/api/shapes/{table}" in spec["paths"]


@pytest.fixture(scope="module")
def limited_pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        yield cluster


def test_rate_limits_answer_429_with_retry_after(limited_pg: PgCluster) -> None:
    for limited in build_stack(limited_pg, gateway={"rate_limit_per_minute": 60}):
        alice, bob = limited.user(), limited.user()
        statuses = [alice.get("/api/me").status_code for _ in range(25)]
        assert statuses[0] == 200 and 429 in statuses
        throttled = alice.get("/api/me")
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        assert throttled.json()["error"]["code"] == "rate_limited"
        # Per caller: another principal is not affected.
        assert bob.get("/api/me").status_code == 200
        # Bad tokens are limited per address.
        statuses = [httpx.get(limited.url + "/api/me", headers={"Authorization": "Bearer x"}).status_code
                    for _ in range(80)]
        assert 429 in statuses

