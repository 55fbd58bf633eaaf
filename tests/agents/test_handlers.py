"""Handlers: third-party ones found through the `appliance.agents` entry-point group, failures as visible error
entries, state committed only with a reply, timeouts, and one slow agent never holding up another."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid

from appliance.agents.store import store_path
from tests.support.agents import AgentStack, Member, replies_to, wait_for, wait_reply
from tests.support.paths import APPLIANCE_BIN, REPO


def error_of(member: Member, thread: str, entry_id: str) -> dict[str, str]:
    [reply] = wait_reply(member, thread, entry_id)
    assert reply["kind"] == "error", reply
    assert reply["text"].endswith(reply["data"]["error"]["message"])
    return dict(reply["data"]["error"])


def test_third_party_handlers_are_listed_from_their_entry_points(stack: AgentStack) -> None:
    listed = subprocess.run(
        [str(APPLIANCE_BIN), "agents", "handlers", "--tenant", stack.tenant.id], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, "APPLIANCE_CONFIG_DIR": str(stack.env.config_dir),
                       "PYTHONPATH": str(stack.plugin_dir)}, check=True,
    ).stdout
    names = listed.splitlines()[0].removeprefix("handlers: ").split(", ")
    assert {"echo", "webhook", "external", "shout", "sleepy", "broken"} <= set(names)


def test_a_third_party_handler_replies_with_its_own_state(stack: AgentStack, member: Member) -> None:
    agent = member.agent("loud", "shout")
    thread = member.thread()
    for expected in (1, 2):
        posted = member.post(thread, "@loud hey")
        [reply] = wait_reply(member, thread, posted["id"])
        assert reply["text"] == "@LOUD HEY" and reply["data"]["count"] == expected
    with sqlite3.connect(store_path(stack.tenant.agents_data, uuid.UUID(agent["id"]))) as db:
        assert db.execute("SELECT value FROM kv WHERE key = 'count'").fetchone() == ("2",)
        stored = db.execute("SELECT value FROM meta WHERE key = 'agent'").fetchone()[0]
    assert f'"id":"{agent["id"]}"' in stored and '"handler":"shout"' in stored


def test_a_raising_handler_posts_an_error_entry_without_its_details(member: Member) -> None:
    member.agent("oops", "broken")
    thread = member.thread()
    posted = member.post(thread, "@oops do it")
    error = error_of(member, thread, posted["id"])
    assert error == {"code": "handler_failed", "message": "its handler failed (RuntimeError)"}
    assert "internal detail" not in str(member.read(thread))


def test_a_handler_error_is_shown_as_the_handler_explains_it(member: Member) -> None:
    member.agent("explainer", "explains")
    thread = member.thread()
    posted = member.post(thread, "@explainer answer")
    assert error_of(member, thread, posted["id"]) == {"code": "model_offline", "message": "the model is offline"}


def test_state_changes_of_a_failed_handler_are_not_kept(stack: AgentStack, member: Member) -> None:
    agent = member.agent("halfway", "stateful_then_broken")
    thread = member.thread()
    posted = member.post(thread, "@halfway go")
    assert error_of(member, thread, posted["id"])["code"] == "handler_failed"
    with sqlite3.connect(store_path(stack.tenant.agents_data, uuid.UUID(agent["id"]))) as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (0,)


def test_a_handler_returning_something_else_posts_an_error_entry(member: Member) -> None:
    member.agent("confused", "not_a_reply")
    thread = member.thread()
    posted = member.post(thread, "@confused answer")
    assert error_of(member, thread, posted["id"])["code"] == "bad_reply"


def test_an_unknown_handler_posts_an_error_entry(member: Member) -> None:
    member.agent("ghost", "not-installed-anywhere")
    thread = member.thread()
    posted = member.post(thread, "@ghost hello")
    error = error_of(member, thread, posted["id"])
    assert error["code"] == "handler_unavailable" and "not-installed-anywhere" in error["message"]


def test_a_handler_over_its_time_gets_an_error_entry(stack: AgentStack, member: Member) -> None:
    member.agent("sloth", "sleepy", {"sleep_s": 30})
    thread = member.thread()
    started = time.monotonic()
    posted = member.post(thread, "@sloth wake up")
    error = error_of(member, thread, posted["id"])
    assert error == {"code": "handler_timeout", "message": "no answer within 3 s"}
    assert time.monotonic() - started < stack.tenant.agents.handler_timeout_s + 2


def test_one_slow_agent_never_blocks_the_others(stack: AgentStack, member: Member) -> None:
    """Backlogs of slow agents wait in their own queues (two running per agent) while another agent answers at
    once - also when the slow ones are plain functions blocking six threads, as many as asyncio's default pool
    has on this machine (the worker's own storage work runs there, never handlers)."""
    slow = [member.agent(f"stuck{i}", "blocking", {"sleep_s": 2}) for i in range(3)]
    member.agent("echo", "echo")
    thread = member.thread()
    mentions = " ".join(f"@{agent['name']}" for agent in slow)
    backlog = [member.post(thread, f"{mentions} job {i}") for i in range(4)]
    time.sleep(0.3)
    started = time.monotonic()
    quick = member.post(thread, "@echo still there?")
    wait_reply(member, thread, quick["id"])
    assert time.monotonic() - started < 1.0
    # Two at a time per agent: the backlog drains in two rounds, each mention answered exactly once.
    wait_for(lambda: all(len(replies_to(m, p["id"])) == 3 for m in [member.read(thread)] for p in backlog),
             timeout=30)
    assert all(r["kind"] == "message" for p in backlog for r in replies_to(member.read(thread), p["id"]))
    assert stack.worker.healthy()


def test_external_agents_get_no_reply_from_the_worker(stack: AgentStack, member: Member) -> None:
    agent = member.agent("outside", "external")
    member.agent("echo", "echo")
    thread = member.thread()
    posted = member.post(thread, "@outside and @echo")
    wait_reply(member, thread, posted["id"])
    path = store_path(stack.tenant.agents_data, uuid.UUID(agent["id"]))
    wait_for(lambda: path.exists())

    def outcome() -> object:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT state, outcome FROM inbox WHERE entry_id = ?", (posted["id"],)).fetchone()

    wait_for(lambda: outcome() == ("done", "external"))
    assert len(replies_to(member.read(thread), posted["id"])) == 1
