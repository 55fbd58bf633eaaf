"""The `webhook` handler against a local test server that answers well, slowly, wrongly, hugely or not at all:
every failure is an error entry in bounded time, and the worker stays healthy and keeps serving other agents."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.support.agents import AgentStack, Member, expected_reply_id, wait_reply
from tests.support.stack import Recorded, RecordingServer, recording_server, send_json

OPERATOR_TOKEN = "operator-model-token-123"


def _answer(server: RecordingServer, record: Recorded, handler: BaseHTTPRequestHandler) -> None:
    try:
        if record.path == "/ok":
            request = json.loads(record.body)
            send_json(handler, 200, {"text": f"model read {len(request['history'])} messages",
                                     "data": {"tokens": 3}})
        elif record.path == "/slow":
            time.sleep(3)
            send_json(handler, 200, {"text": "too late"})
        elif record.path == "/fail":
            send_json(handler, 500, {"error": "boom"})
        elif record.path == "/refuse":
            send_json(handler, 403, {"error": "no"})
        elif record.path == "/redirect":
            handler.send_response(302)
            handler.send_header("location", "/ok")
            handler.send_header("content-length", "0")
            handler.end_headers()
        elif record.path in ("/garbage", "/wrong-shape"):
            body = b"<html>not json</html>" if record.path == "/garbage" else b'{"answer": 42}'
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        elif record.path == "/huge":
            send_json(handler, 200, {"text": "x" * 10_000})
        elif record.path == "/endless":
            # No Content-Length, and more than the cap: the worker must stop reading by itself.
            handler.send_response(200)
            handler.send_header("content-type", "application/json")
            handler.send_header("connection", "close")
            handler.end_headers()
            handler.wfile.write(b'{"text": "')
            for _ in range(100):
                handler.wfile.write(b"y" * 1024)
                handler.wfile.flush()
                time.sleep(0.01)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker gave up on this answer, as it should


@pytest.fixture(scope="module")
def model(stack: AgentStack) -> Iterator[RecordingServer]:
    with recording_server(_answer) as server:
        endpoints: dict[str, dict[str, Any]] = {name: {"url": f"{server.url}/{name}"} for name in
                     ("slow", "fail", "refuse", "redirect", "garbage", "wrong-shape", "huge", "endless")}
        endpoints["default"] = {"url": f"{server.url}/ok", "headers": {"Authorization": f"Bearer {OPERATOR_TOKEN}"}}
        endpoints["down"] = {"url": "http://127.0.0.1:9/unreachable"}
        stack.set_webhooks(endpoints)
        yield server


def requests_to(model: RecordingServer, path: str) -> list[Recorded]:
    return [r for r in model.requests if r.path == path]


def test_the_webhook_answer_is_posted_as_the_reply(model: RecordingServer, member: Member) -> None:
    agent = member.agent("model", "webhook", {"history": 5})
    thread = member.thread()
    member.post(thread, "some context")
    posted = member.post(thread, "@model what do you think")
    [reply] = wait_reply(member, thread, posted["id"])
    assert reply["kind"] == "message" and reply["text"] == "model read 2 messages"
    assert reply["data"] == {"tokens": 3} and reply["author"] == {"id": agent["id"], "kind": "agent"}
    [call] = [r for r in requests_to(model, "/ok") if json.loads(r.body)["event"]["entry_id"] == posted["id"]]
    assert call.headers["authorization"] == f"Bearer {OPERATOR_TOKEN}"
    assert call.headers["idempotency-key"] == expected_reply_id(agent, posted["id"])
    body = json.loads(call.body)
    assert body["entry"]["text"] == "@model what do you think"
    assert [m["text"] for m in body["history"]] == ["some context", "@model what do you think"]
    assert body["agent"]["name"] == "model" and body["reply_id"] == reply["id"]


def error_of(member: Member, thread: str, entry_id: str) -> dict[str, Any]:
    [reply] = wait_reply(member, thread, entry_id)
    assert reply["kind"] == "error", reply
    return dict(reply["data"]["error"])


@pytest.mark.parametrize(("endpoint", "code", "calls"), [
    ("slow", "webhook_timeout", 2),
    ("fail", "webhook_failed", 2),
    ("down", "webhook_unreachable", 0),
    ("refuse", "webhook_refused", 1),
    ("redirect", "webhook_refused", 1),
    ("garbage", "webhook_bad_reply", 1),
    ("wrong-shape", "webhook_bad_reply", 1),
    ("huge", "webhook_reply_too_large", 1),
    ("endless", "webhook_reply_too_large", 1),
    ("nonexistent", "webhook_not_configured", 0),
])
def test_a_failing_webhook_posts_an_error_entry_in_bounded_time(
        stack: AgentStack, model: RecordingServer, member: Member, endpoint: str, code: str, calls: int) -> None:
    member.agent("model", "webhook", {"webhook": endpoint})
    thread = member.thread()
    started = time.monotonic()
    posted = member.post(thread, f"@model try {endpoint}")
    error = error_of(member, thread, posted["id"])
    elapsed = time.monotonic() - started
    assert error["code"] == code
    # Two attempts of at most webhook_timeout_s (1 s) and a backoff; never the handler timeout (3 s) or more.
    assert elapsed < 3.0, elapsed
    # Exactly as many attempts as the failure deserves: none retried that should not be.
    assert len(requests_to(model, f"/{endpoint}")) == calls
    # The thread says what failed, never where the endpoint is or how it authenticates.
    entry_text = json.dumps(member.read(thread))
    assert model.url not in entry_text and OPERATOR_TOKEN not in entry_text and "127.0.0.1" not in entry_text
    assert stack.worker.healthy()


def test_a_slow_webhook_does_not_hold_up_other_agents(stack: AgentStack, model: RecordingServer,
                                                      member: Member) -> None:
    member.agent("model", "webhook", {"webhook": "slow"})
    member.agent("echo", "echo")
    thread = member.thread()
    slow = [member.post(thread, f"@model slow {i}") for i in range(4)]
    started = time.monotonic()
    quick = member.post(thread, "@echo quick")
    wait_reply(member, thread, quick["id"])
    assert time.monotonic() - started < 1.0
    for posted in slow:
        assert error_of(member, thread, posted["id"])["code"] == "webhook_timeout"
    assert stack.worker.healthy()


def test_the_operator_config_is_read_at_each_call(stack: AgentStack, model: RecordingServer,
                                                  member: Member) -> None:
    member.agent("model", "webhook", {"webhook": "later"})
    thread = member.thread()
    first = member.post(thread, "@model before")
    assert error_of(member, thread, first["id"])["code"] == "webhook_not_configured"
    endpoints = json.loads((stack.tenant.agents_data / "webhooks.json").read_text())
    stack.set_webhooks({**endpoints, "later": {"url": f"{model.url}/ok"}})
    second = member.post(thread, "@model after")
    [reply] = wait_reply(member, thread, second["id"])
    assert reply["kind"] == "message"
