"""Threads end to end: the stream behind each thread, entries exactly once, live tailing through the gateway,
and mention dispatch through the outbox to the agent workers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb

from appliance.audit.chain import GENESIS_HASH, fetch_rows, verify_rows
from tests.gateway.conftest import Stack, User
from tests.support.stack import Recorded, RecordingServer, recording_server, send_json


def read_all(user: User, thread: str) -> list[dict[str, Any]]:
    response = user.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})
    assert response.status_code == 200, response.text
    return list(response.json())


def entry(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "text": text, **extra}


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_creating_a_thread_creates_its_stream(stack: Stack, member: tuple[User, str, str]) -> None:
    _, _, thread = member
    direct = httpx.get(f"{stack.streams.url}/thread-{thread}", params={"offset": "-1"})
    assert direct.status_code == 200 and direct.json() == []
    assert direct.headers["content-type"].startswith("application/json")


def test_entries_are_appended_in_order_with_author_and_mentions(member: tuple[User, str, str]) -> None:
    user, _, thread = member
    sent = [entry(f"message {i} @Echo") for i in range(5)]
    offsets = []
    for body in sent:
        response = user.post(f"/api/threads/{thread}/entries", body)
        assert response.status_code == 201 and response.json()["duplicate"] is False
        offsets.append(response.json()["data"]["offset"])
    assert offsets == sorted(offsets)
    messages = read_all(user, thread)
    assert [m["id"] for m in messages] == [b["id"] for b in sent]
    assert messages[0]["author"] == {"id": str(user.id), "kind": "user"}
    assert messages[0]["mentions"] == ["Echo"] and messages[0]["type"] == "entry"


def test_entries_are_audited_with_their_mentions_and_the_chain_verifies(
        stack: Stack, member: tuple[User, str, str]) -> None:
    """The database completes each entry's audit event (house, unknown mentions) around the gateway's canonical
    text: the stored detail is what was hashed, so the whole chain verifies."""
    user, house, thread = member
    known = user.post("/api/agents", {"house_id": house, "name": "Known", "handler": "echo"})
    assert known.status_code == 201
    plain, mixed, system = entry("no mentions"), entry("@known, @nobody and @Ghost-2"), entry("n", kind="system")
    for body in (plain, mixed, system):
        assert user.post(f"/api/threads/{thread}/entries", body).status_code == 201
    rows = stack.sql("SELECT detail, house_id, actor FROM audit.events WHERE action = 'thread.entry.append' "
                     "AND subject = %s ORDER BY seq", [f"thread:{thread}"])
    assert [r[0] for r in rows] == [
        {"entry_id": plain["id"], "kind": "message", "mentions": [], "unknown_mentions": []},
        {"entry_id": mixed["id"], "kind": "message", "mentions": ["known", "nobody", "Ghost-2"],
         "unknown_mentions": ["nobody", "Ghost-2"]},
        {"entry_id": system["id"], "kind": "system", "mentions": [], "unknown_mentions": []},
    ]
    assert {(str(r[1]), r[2]) for r in rows} == {(house, str(user.id))}
    outbox = stack.sql("SELECT agent_name, state, last_error FROM appliance.outbox WHERE entry_id = %s ORDER BY id",
                       [mixed["id"]])
    # (the known agent's activation is being delivered meanwhile, to no worker: its error varies)
    assert [(r[0], r[1] == "gave_up", r[2] if r[1] == "gave_up" else None) for r in outbox] == [
        ("known", False, None), ("nobody", True, "unknown agent"), ("Ghost-2", True, "unknown agent")]
    # Its activation must not reach a later test's worker.
    user.delete(f"/api/agents/{known.json()['data']['id']}")
    wait_for(lambda: stack.sql("SELECT count(*) FROM appliance.outbox WHERE entry_id = %s AND state = 'gave_up'",
                               [mixed["id"]]) == [(3,)], timeout=30)
    with stack.env.superuser() as conn:
        chain = fetch_rows(conn, 0, 1_000_000)
    result = verify_rows(chain, prev_hash=GENESIS_HASH, first_seq=1)
    assert result.ok, result.first_break


def test_a_retried_entry_is_stored_once(stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    body = entry("only once")
    first = user.post(f"/api/threads/{thread}/entries", body)
    retry = user.post(f"/api/threads/{thread}/entries", body)
    assert first.status_code == 201 and retry.status_code == 200
    assert retry.json() == {"data": first.json()["data"], "duplicate": True}
    different = user.post(f"/api/threads/{thread}/entries", {**body, "text": "something else"})
    assert different.status_code == 409 and different.json()["error"]["code"] == "entry_conflict"
    other_thread = user.thread(house)
    elsewhere = user.post(f"/api/threads/{other_thread}/entries", body)
    assert elsewhere.status_code == 409
    assert [m["id"] for m in read_all(user, thread)].count(body["id"]) == 1
    assert read_all(user, other_thread) == []


def test_concurrent_retries_store_one_copy(member: tuple[User, str, str]) -> None:
    user, _, thread = member
    body = entry("raced")
    statuses: list[int] = []

    def post() -> None:
        statuses.append(user.post(f"/api/threads/{thread}/entries", body).status_code)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 9 + [201]
    assert [m["id"] for m in read_all(user, thread)] == [body["id"]]


def _pending_row(stack: Stack, user: User, house: str, thread: str, text: str) -> dict[str, Any]:
    """What a gateway killed between recording an entry and appending it leaves behind."""
    entry_id = str(uuid.uuid4())
    message = {"type": "entry", "id": entry_id, "thread_id": thread, "kind": "message",
               "author": {"id": str(user.id), "kind": "user"}, "text": text, "mentions": [],
               "created_at": "2026-01-01T00:00:00.000000Z"}
    from appliance.gateway.domain.entries import request_hash
    from appliance.gateway.domain.models import EntryCreate

    digest = request_hash(EntryCreate(id=uuid.UUID(entry_id), text=text))
    stack.sql(
        "INSERT INTO appliance.thread_entries (id, thread_id, house_id, author_id, message, request_hash, state, "
        "floor_offset) VALUES (%s, %s, %s, %s, %s, %s, 'pending', '-1')",
        [entry_id, thread, house, user.id, Jsonb(message), digest],
    )
    return message


def test_an_entry_recorded_but_never_appended_is_completed_once(stack: Stack,
                                                                 member: tuple[User, str, str]) -> None:
    user, house, thread = member
    message = _pending_row(stack, user, house, thread, "left pending by a crash")
    retry = user.post(f"/api/threads/{thread}/entries", {"id": message["id"], "text": message["text"]})
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert [m["id"] for m in read_all(user, thread)] == [message["id"]]
    assert stack.sql("SELECT state FROM appliance.thread_entries WHERE id = %s", [message["id"]]) == [("appended",)]


def test_an_entry_appended_but_not_recorded_as_such_is_not_appended_again(
        stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    message = _pending_row(stack, user, house, thread, "appended, then the gateway died")
    httpx.post(f"{stack.streams.url}/thread-{thread}", json=message).raise_for_status()
    # The recovery sweep finds it (no client retry needed) and only records it.
    wait_for(lambda: stack.sql("SELECT state FROM appliance.thread_entries WHERE id = %s",
                               [message["id"]]) == [("appended",)], timeout=20)
    assert [m["id"] for m in read_all(user, thread)] == [message["id"]]
    retry = user.post(f"/api/threads/{thread}/entries", {"id": message["id"], "text": message["text"]})
    assert retry.status_code == 200
    assert [m["id"] for m in read_all(user, thread)] == [message["id"]]


def test_streams_outage_is_a_503_and_the_retry_completes_once(stack: Stack, member: tuple[User, str, str]) -> None:
    user, _, thread = member
    body = entry("during an outage")
    stack.streams.stop()
    try:
        response = user.post(f"/api/threads/{thread}/entries", body)
        assert response.status_code == 503 and response.json()["error"]["code"] == "streams_unavailable"
        assert response.headers["retry-after"] == "1"
        assert user.get(f"/api/threads/{thread}/stream").status_code == 503
    finally:
        stack.streams.start()
    retry = user.post(f"/api/threads/{thread}/entries", body)
    assert retry.status_code in (200, 201)
    assert [m["id"] for m in read_all(user, thread)] == [body["id"]]


def test_a_refused_read_is_refused_before_anything_of_the_stream(stack: Stack,
                                                                  member: tuple[User, str, str]) -> None:
    """A refusal wins over whatever the stream holds or does (data, a long-poll that would wait, the streams
    server down), and is answered at once."""
    user, _, thread = member
    user.post(f"/api/threads/{thread}/entries", entry("members only"))
    outsider = stack.user()
    reads = [{"offset": "-1"}, {"offset": "-1", "live": "long-poll"}, {"offset": "now", "live": "long-poll"}]
    for params in reads:
        started = time.monotonic()
        response = outsider.get(f"/api/threads/{thread}/stream", params=params)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert "members only" not in response.text
        assert time.monotonic() - started < 1.0  # not after the streams server's 2 s long-poll
    stack.streams.stop()
    try:
        for params in reads:
            assert outsider.get(f"/api/threads/{thread}/stream", params=params).status_code == 404
        assert user.get(f"/api/threads/{thread}/stream").status_code == 503
    finally:
        stack.streams.start()
    assert [m["text"] for m in read_all(user, thread)] == ["members only"]


def test_live_long_poll_tail_through_the_gateway(member: tuple[User, str, str]) -> None:
    user, _, thread = member
    first = user.post(f"/api/threads/{thread}/entries", entry("before")).json()["data"]["offset"]
    received: dict[str, Any] = {}

    def tail() -> None:
        started = time.monotonic()
        response = user.get(f"/api/threads/{thread}/stream", params={"offset": first, "live": "long-poll"})
        received.update(status=response.status_code, body=response.json(), elapsed=time.monotonic() - started,
                        headers=dict(response.headers))

    waiter = threading.Thread(target=tail)
    waiter.start()
    time.sleep(0.3)
    body = entry("while tailing")
    user.post(f"/api/threads/{thread}/entries", body)
    waiter.join(10)
    assert received["status"] == 200 and [m["id"] for m in received["body"]] == [body["id"]]
    assert "stream-next-offset" in received["headers"] and "stream-cursor" in received["headers"]
    assert "access-control-allow-origin" not in received["headers"] and "location" not in received["headers"]
    # No news: the long-poll ends with 204 after the server's timeout (2 s in tests), passed through as is.
    quiet = user.get(f"/api/threads/{thread}/stream",
                     params={"offset": received["headers"]["stream-next-offset"], "live": "long-poll"})
    assert quiet.status_code == 204


def test_live_sse_tail_streams_each_event_as_it_comes(member: tuple[User, str, str]) -> None:
    user, _, thread = member
    bodies = [entry(f"sse {i}") for i in range(2)]
    seen: list[str] = []
    with user.http.stream("GET", f"/api/threads/{thread}/stream", params={"offset": "-1", "live": "sse"},
                          timeout=httpx.Timeout(10.0)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        for body in bodies:
            user.post(f"/api/threads/{thread}/entries", body)
            for line in lines:
                if line.startswith("data:") and body["id"] in line:
                    seen.append(body["id"])
                    break
    assert seen == [b["id"] for b in bodies]


@pytest.mark.parametrize("params", [
    {"offset": "../../etc"}, {"offset": "1; DROP TABLE houses"}, {"live": "forever"}, {"cursor": "a b"},
])
def test_stream_read_params_are_validated(member: tuple[User, str, str], params: dict[str, str]) -> None:
    user, _, thread = member
    response = user.get(f"/api/threads/{thread}/stream", params=params)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


# -- mention dispatch ---------------------------------------------------------------------------------------


def agent_worker(stack: Stack, statuses: list[int] | None = None) -> Any:
    """A stand-in for the agent workers on the tenant's agents port: records activations, answers in turn."""
    answers = list(statuses or [])

    def handle(server: RecordingServer, record: Recorded, handler: BaseHTTPRequestHandler) -> None:
        status = answers.pop(0) if answers else 200
        send_json(handler, status, {"ok": status < 300})
        server.event("activation").set()

    return recording_server(handle, port=stack.env.tenant.port("agents"))


def activations(server: RecordingServer) -> list[Recorded]:
    return [r for r in server.requests if r.path.startswith("/activate/")]


def test_a_mention_activates_the_agent_with_config_and_event(stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    agent = user.post("/api/agents", {"house_id": house, "name": "echo", "handler": "echo",
                                      "config": {"greeting": "hi"}}).json()["data"]
    user.post("/api/configs", {"house_id": house, "key": "model", "value": "small"})
    with agent_worker(stack) as worker:
        body = entry("hey @echo, and @nobody")
        posted = user.post(f"/api/threads/{thread}/entries", body).json()["data"]
        wait_for(lambda: activations(worker))
        time.sleep(0.2)
    [call] = activations(worker)
    assert call.path == f"/activate/{agent['id']}" and call.method == "POST"
    assert call.headers["authorization"] == f"Bearer {stack.env.tenant.read_secret('agents_internal_token')}"
    payload = json.loads(call.body)
    assert payload["agent"]["id"] == agent["id"] and payload["agent"]["config"] == {"greeting": "hi"}
    assert payload["agent"]["handler"] == "echo" and payload["configs"] == {"model": "small"}
    assert payload["event"] == {
        "type": "mention", "activation_id": payload["event"]["activation_id"], "attempt": 1, "house_id": house,
        "thread_id": thread, "stream": f"thread-{thread}", "entry_id": body["id"], "offset": posted["offset"],
        "mentioned_by": str(user.id), "agent_name": "echo",
    }
    states = dict(stack.sql("SELECT agent_name, state FROM appliance.outbox WHERE entry_id = %s", [body["id"]]))
    assert states == {"echo": "delivered", "nobody": "gave_up"}
    assert stack.sql("SELECT last_error FROM appliance.outbox WHERE entry_id = %s AND agent_name = 'nobody'",
                     [body["id"]]) == [("unknown agent",)]


def test_an_unavailable_worker_gets_the_activation_later(stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    user.post("/api/agents", {"house_id": house, "name": "later", "handler": "echo"})
    body = entry("@later please")
    user.post(f"/api/threads/{thread}/entries", body)
    wait_for(lambda: stack.sql("SELECT attempts > 0 FROM appliance.outbox WHERE entry_id = %s",
                               [body["id"]]) == [(True,)])
    with agent_worker(stack, statuses=[503]) as worker:
        wait_for(lambda: stack.sql("SELECT state FROM appliance.outbox WHERE entry_id = %s",
                                   [body["id"]]) == [("delivered",)], timeout=30)
    assert len(activations(worker)) == 2
    attempts = stack.sql("SELECT attempts FROM appliance.outbox WHERE entry_id = %s", [body["id"]])[0][0]
    assert attempts >= 3


def test_a_deleted_agent_or_a_permanent_refusal_is_given_up_and_audited(
        stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    gone = user.post("/api/agents", {"house_id": house, "name": "gone", "handler": "echo"}).json()["data"]
    user.post("/api/agents", {"house_id": house, "name": "picky", "handler": "echo"})
    first = entry("@gone are you there")
    user.post(f"/api/threads/{thread}/entries", first)
    user.delete(f"/api/agents/{gone['id']}")
    # The dispatcher may have tried the mention before the delete, found no worker listening and backed off (up
    # to a minute on a loaded machine): make it due again, so what is tested is what it does with a deleted agent.
    stack.sql("UPDATE appliance.outbox SET next_attempt_at = now() WHERE entry_id = %s", [first["id"]])
    with agent_worker(stack, statuses=[404]):
        second = entry("@picky hello")
        user.post(f"/api/threads/{thread}/entries", second)
        wait_for(lambda: stack.sql(
            "SELECT count(*) FROM appliance.outbox WHERE entry_id IN (%s, %s) AND state = 'gave_up'",
            [first["id"], second["id"]]) == [(2,)], timeout=30)
    reasons = dict(stack.sql("SELECT agent_name, last_error FROM appliance.outbox WHERE entry_id IN (%s, %s)",
                             [first["id"], second["id"]]))
    assert reasons == {"gone": "agent deleted", "picky": "refused by the agent workers (404)"}
    audited = stack.sql("SELECT detail->>'agent_name' FROM audit.events WHERE action = 'agent.activation.gave_up' "
                        "AND house_id = %s ORDER BY seq", [house])
    assert {r[0] for r in audited} == {"gone", "picky"}


def test_finished_activations_past_their_retention_are_pruned_and_nothing_else(
        stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    retention = stack.env.tenant.gateway.outbox_retention_days
    rows = {}
    for state, age_days in (("delivered", retention + 1), ("gave_up", retention + 1), ("delivered", retention - 1),
                            ("held", retention + 5), ("ready", retention + 5)):
        message = _pending_row(stack, user, house, thread, f"{state} {age_days} days ago")
        finished = "now() - make_interval(days => %s)" if state in ("delivered", "gave_up") else "NULL::timestamptz"
        (outbox_id,), = stack.sql(
            "INSERT INTO appliance.outbox (entry_id, thread_id, house_id, agent_name, mentioned_by, state, "
            "created_at, next_attempt_at, finished_at) VALUES (%s, %s, %s, 'old', %s, %s, "
            "now() - make_interval(days => %s), now() + interval '1 day', " + finished + ") RETURNING id",
            [message["id"], thread, house, user.id, state, age_days]
            + ([age_days] if state in ("delivered", "gave_up") else []))
        rows[outbox_id] = (state, age_days)
    runtime = stack.gateway.app.state.gateway
    removed = asyncio.run_coroutine_threadsafe(runtime.dispatcher.prune(), runtime.loop).result(10)
    left = {r[0] for r in stack.sql("SELECT id FROM appliance.outbox WHERE id = ANY(%s)", [list(rows)])}
    expected = {i for i, (state, age) in rows.items() if state in ("held", "ready") or age < retention}
    assert left == expected and removed == len(rows) - len(expected) == 2


def test_recovered_entries_release_their_activations(stack: Stack, member: tuple[User, str, str]) -> None:
    user, house, thread = member
    agent = user.post("/api/agents", {"house_id": house, "name": "recover", "handler": "echo"}).json()["data"]
    message = _pending_row(stack, user, house, thread, "@recover crash left me pending")
    stack.sql("INSERT INTO appliance.outbox (entry_id, thread_id, house_id, agent_name, agent_id, mentioned_by, state)"
              " VALUES (%s, %s, %s, 'recover', %s, %s, 'held')", [message["id"], thread, house, agent["id"], user.id])
    with agent_worker(stack) as worker:
        wait_for(lambda: activations(worker), timeout=20)
    assert json.loads(activations(worker)[0].body)["event"]["entry_id"] == message["id"]
    assert [m["id"] for m in read_all(user, thread)] == [message["id"]]


def test_a_thread_whose_stream_is_gone_reads_as_empty(stack: Stack, member: tuple[User, str, str]) -> None:
    user, _, thread = member
    assert httpx.delete(f"{stack.streams.url}/thread-{thread}").status_code == 204
    response = user.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})
    assert response.status_code == 200 and response.json() == []
    body = entry("after the loss")
    assert user.post(f"/api/threads/{thread}/entries", body).status_code == 201
    assert [m["id"] for m in read_all(user, thread)] == [body["id"]]


def test_a_thread_id_in_another_form_is_read_through_the_route_alike(member: tuple[User, str, str]) -> None:
    """The hot path takes canonical ids; the route takes the other forms a UUID may be written in (no dashes,
    braces) and proxies the same answer, through FastAPI's handling of a returned response."""
    user, _, thread = member
    body = entry("read by any name")
    assert user.post(f"/api/threads/{thread}/entries", body).status_code == 201
    canonical = user.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})
    for other in (uuid.UUID(thread).hex, "{" + thread + "}"):
        answer = user.get(f"/api/threads/{other}/stream", params={"offset": "-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == canonical.json() and [m["id"] for m in answer.json()] == [body["id"]]
        assert answer.headers["stream-next-offset"] == canonical.headers["stream-next-offset"]
