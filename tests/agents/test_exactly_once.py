"""Exactly one reply per (agent, triggering entry): duplicate deliveries, kill -9 of the worker mid-handler or
before it accepted, and a crash between appending the reply and recording it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.agents.store import store_path
from tests.support.agents import (
    AgentStack,
    Member,
    activation_body,
    agent_stack,
    expected_reply_id,
    replies_to,
    wait_for,
    wait_reply,
)
from tests.support.pg import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(pg_module: PgCluster) -> Iterator[AgentStack]:
    # Its own stack: these tests kill and restart the worker.
    with agent_stack(pg_module) as built:
        yield built


@pytest.fixture
def running(stack: AgentStack) -> Iterator[AgentStack]:
    """The worker is up at the start and at the end of each test, whatever the test did to it."""
    if stack.worker.process is None or stack.worker.process.poll() is not None:
        stack.worker.start()
    yield stack
    if stack.worker.process is None or stack.worker.process.poll() is not None:
        stack.worker.start()


def inbox(stack: AgentStack, agent: dict[str, str], entry_id: str) -> tuple[str, str | None, int, int]:
    path = store_path(stack.tenant.agents_data, uuid.UUID(agent["id"]))
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT state, outcome, runs, deliveries FROM inbox WHERE entry_id = ?",
                         (entry_id,)).fetchone()
    return row  # type: ignore[no-any-return]


def outbox_state(stack: AgentStack, entry_id: str) -> list[tuple[str, int]]:
    return stack.sql("SELECT state, attempts FROM appliance.outbox WHERE entry_id = %s", [entry_id])


def test_duplicate_deliveries_make_one_reply(running: AgentStack, member: Member) -> None:
    stack = running
    echo = member.agent("echo", "echo")
    thread = member.thread()
    posted = member.post(thread, "@echo once")
    wait_reply(member, thread, posted["id"])
    wait_for(lambda: outbox_state(stack, posted["id"]) == [("delivered", 1)])
    body = activation_body(echo, thread, posted, member.id, attempt=2)
    again = stack.activate(echo["id"], body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["reply_id"] == expected_reply_id(echo, posted["id"])
    # The gateway's record of the delivery is lost (a Postgres crash): the outbox delivers it again.
    stack.sql("UPDATE appliance.outbox SET state = 'ready', next_attempt_at = now() WHERE entry_id = %s",
              [posted["id"]])
    stack.gateway.app.state.gateway.dispatcher.wake()
    wait_for(lambda: outbox_state(stack, posted["id"]) == [("delivered", 2)])
    time.sleep(0.5)
    assert len(replies_to(member.read(thread), posted["id"])) == 1
    assert inbox(stack, echo, posted["id"])[3] == 3  # three deliveries, one run
    assert inbox(stack, echo, posted["id"])[:3] == ("done", "replied", 1)


def test_concurrent_duplicates_make_one_reply(running: AgentStack, member: Member) -> None:
    stack = running
    sleepy = member.agent("slowpoke", "sleepy", {"sleep_s": 0.5})
    thread = member.thread()
    posted = member.post(thread, "@slowpoke hello")
    body = activation_body(sleepy, thread, posted, member.id)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: stack.activate(sleepy["id"], body).status_code, range(8)))
    assert set(statuses) <= {200, 202}
    wait_reply(member, thread, posted["id"])
    wait_for(lambda: outbox_state(stack, posted["id"])[0][0] == "delivered")
    time.sleep(1.0)
    assert len(replies_to(member.read(thread), posted["id"])) == 1


def test_kill_9_mid_handler_makes_one_reply(running: AgentStack, member: Member, tmp_path: Path) -> None:
    stack = running
    started = tmp_path / "started"
    sleepy = member.agent("sleepy", "sleepy", {"sleep_s": 2, "started_file": str(started)})
    thread = member.thread()
    posted = member.post(thread, "@sleepy take your time")
    wait_for(lambda: started.exists() and started.read_text().count("\n") == 1)
    stack.worker.kill()
    assert replies_to(member.read(thread), posted["id"]) == []
    assert inbox(stack, sleepy, posted["id"])[:3] == ("pending", None, 1)
    stack.worker.start()
    [reply] = wait_reply(member, thread, posted["id"])
    assert reply["text"] == "woke up" and reply["id"] == expected_reply_id(sleepy, posted["id"])
    time.sleep(0.5)
    assert len(replies_to(member.read(thread), posted["id"])) == 1
    assert started.read_text().count("\n") == 2  # the handler ran again; its reply was appended once
    assert inbox(stack, sleepy, posted["id"])[:3] == ("done", "replied", 2)
    assert outbox_state(stack, posted["id"]) == [("delivered", 1)]


def test_activation_refused_by_a_dead_worker_is_retried_by_the_outbox(running: AgentStack, member: Member) -> None:
    stack = running
    member.agent("echo", "echo")
    thread = member.thread()
    stack.worker.kill()
    posted = member.post(thread, "@echo are you there")
    wait_for(lambda: outbox_state(stack, posted["id"])[0][1] >= 1)
    assert outbox_state(stack, posted["id"])[0][0] == "ready"
    stack.worker.start()
    wait_reply(member, thread, posted["id"], timeout=30)
    wait_for(lambda: outbox_state(stack, posted["id"])[0][0] == "delivered")
    assert len(replies_to(member.read(thread), posted["id"])) == 1


def test_an_agent_deleted_before_delivery_is_given_up(running: AgentStack, member: Member) -> None:
    stack = running
    doomed = member.agent("doomed", "echo")
    thread = member.thread()
    stack.worker.kill()
    posted = member.post(thread, "@doomed last words")
    wait_for(lambda: outbox_state(stack, posted["id"])[0][1] >= 1)
    assert member.http.delete(f"/api/agents/{doomed['id']}").status_code == 200
    stack.worker.start()
    wait_for(lambda: stack.sql("SELECT state, last_error FROM appliance.outbox WHERE entry_id = %s",
                               [posted["id"]]) == [("gave_up", "agent deleted")], timeout=30)
    attempts = outbox_state(stack, posted["id"])[0][1]
    time.sleep(1.5)
    assert outbox_state(stack, posted["id"]) == [("gave_up", attempts)]
    assert replies_to(member.read(thread), posted["id"]) == []


def test_a_reply_appended_but_not_recorded_is_not_appended_again(running: AgentStack, member: Member) -> None:
    """The crash came after the append and before the inbox recorded it: the row is still prepared (or, had the
    prepare commit been lost too, pending). The restarted worker finds the reply in the stream by its id."""
    stack = running
    echo = member.agent("echo", "echo")
    thread = member.thread()
    first = member.post(thread, "@echo first")
    second = member.post(thread, "@echo second")
    wait_reply(member, thread, first["id"])
    wait_reply(member, thread, second["id"])
    stack.worker.kill()
    path = store_path(stack.tenant.agents_data, uuid.UUID(echo["id"]))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE inbox SET state = 'prepared', outcome = NULL WHERE entry_id = ?", (first["id"],))
        db.execute("UPDATE inbox SET state = 'pending', outcome = NULL, reply = NULL, runs = 0 WHERE entry_id = ?",
                   (second["id"],))
    stack.worker.start()
    wait_for(lambda: inbox(stack, echo, first["id"])[0] == "done" and inbox(stack, echo, second["id"])[0] == "done")
    assert inbox(stack, echo, first["id"])[:3] == ("done", "found", 1)
    assert inbox(stack, echo, second["id"])[:3] == ("done", "found", 0)  # found before any handler ran
    messages = member.read(thread)
    assert len(replies_to(messages, first["id"])) == 1 and len(replies_to(messages, second["id"])) == 1


def test_many_activations_through_repeated_kill_9_each_get_one_reply(running: AgentStack, member: Member) -> None:
    stack = running
    agents = [member.agent(f"napper{i}", "sleepy", {"sleep_s": 0.3}) for i in range(4)]
    thread = member.thread()
    posted = [member.post(thread, f"@{agent['name']} number {n}") for agent in agents for n in range(5)]
    for _ in range(2):
        time.sleep(0.7)
        stack.worker.kill()
        time.sleep(0.2)
        stack.worker.start()
    wait_for(lambda: all(replies_to(messages, p["id"]) for messages in [member.read(thread)] for p in posted),
             timeout=60)
    time.sleep(0.5)
    messages = member.read(thread)
    assert all(len(replies_to(messages, p["id"])) == 1 for p in posted)
    assert len({m["id"] for m in messages}) == len(messages)


def test_an_entry_that_kills_the_worker_each_time_gets_an_error_entry(running: AgentStack, member: Member) -> None:
    stack = running
    member.agent("crasher", "suicidal")
    thread = member.thread()
    posted = member.post(thread, "@crasher go")
    for _ in range(3):
        wait_for(lambda: stack.worker.process is not None and stack.worker.process.poll() is not None)
        with contextlib.suppress(RuntimeError):  # it resumed the entry and died again before its health check
            stack.worker.start()
    [reply] = wait_reply(member, thread, posted["id"], timeout=30)
    assert reply["kind"] == "error" and reply["data"]["error"]["code"] == "worker_crashed"
    assert stack.worker.healthy()


def test_a_streams_outage_mid_handler_ends_in_one_reply(running: AgentStack, member: Member, tmp_path: Path) -> None:
    """The append fails while the streams server is down: the decided reply is kept (prepared) and appended once
    the server is back - after looking whether an append whose answer was lost went through."""
    stack = running
    started = tmp_path / "started"
    sleepy = member.agent("patient", "sleepy", {"sleep_s": 1.5, "started_file": str(started)})
    thread = member.thread()
    posted = member.post(thread, "@patient hold on")
    wait_for(lambda: started.exists())
    stack.streams.stop()
    try:
        wait_for(lambda: inbox(stack, sleepy, posted["id"])[0] == "prepared", timeout=10)
    finally:
        stack.streams.start()
    [reply] = wait_reply(member, thread, posted["id"], timeout=40)
    assert reply["text"] == "woke up"
    wait_for(lambda: inbox(stack, sleepy, posted["id"])[0] == "done")
    assert inbox(stack, sleepy, posted["id"])[:3] == ("done", "replied", 1)  # the handler ran once
    assert started.read_text().count("\n") == 1
    assert len(replies_to(member.read(thread), posted["id"])) == 1
    assert stack.worker.healthy()


def test_a_graceful_stop_mid_handler_resumes_without_counting_the_run(running: AgentStack, member: Member,
                                                                       tmp_path: Path) -> None:
    stack = running
    started = tmp_path / "started"
    sleepy = member.agent("drowsy", "sleepy", {"sleep_s": 2, "started_file": str(started)})
    thread = member.thread()
    posted = member.post(thread, "@drowsy hello")
    wait_for(lambda: started.exists())
    stack.worker.stop()  # SIGTERM: the running handler is cancelled, the activation stays in the inbox
    assert inbox(stack, sleepy, posted["id"])[:3] == ("pending", None, 0)
    stack.worker.start()
    wait_reply(member, thread, posted["id"])
    wait_for(lambda: inbox(stack, sleepy, posted["id"])[0] == "done")
    assert inbox(stack, sleepy, posted["id"])[:3] == ("done", "replied", 1)
    assert len(replies_to(member.read(thread), posted["id"])) == 1
