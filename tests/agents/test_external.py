"""The external agent example (appliance/agents/examples/external_agent.py), run as its own process: an API key
exchanged at the gateway for a short-lived JWT, then reading and answering through the gateway as the agent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import AgentStack, Member, replies_to, wait_for, wait_reply
from tests.support.paths import REPO
from tests.support.stack import stop_process

EXAMPLE = REPO / "appliance" / "agents" / "examples" / "external_agent.py"


@pytest.fixture
def outside(member: Member) -> tuple[dict[str, Any], str]:
    agent = member.agent("outside", "external")
    created = member.http.post("/api/api_keys", json={"agent_id": agent["id"], "name": "outside"})
    assert created.status_code == 201, created.text
    return agent, str(created.json()["data"]["key"])


def example(stack: AgentStack, api_key: str, thread: str, *flags: str) -> subprocess.Popen[str]:
    # The key travels in the environment, as the example documents: never on the command line.
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--gateway", stack.gateway.url, "--thread", thread, "--name", "outside",
         *flags], env={**os.environ, "APPLIANCE_API_KEY": api_key}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )


def test_the_example_answers_mentions_through_the_gateway_once(stack: AgentStack, member: Member,
                                                              outside: tuple[dict[str, Any], str]) -> None:
    agent, api_key = outside
    thread = member.thread()
    member.post(thread, "nothing for you")
    asked = member.post(thread, "@outside what is new?")
    for expected_new in (1, 0):  # run twice: the second run finds its answer already stored
        process = example(stack, api_key, thread, "--once")
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        assert f"{expected_new} new answer(s)" in output
        assert api_key not in output
    [answer] = replies_to(member.read(thread), asked["id"])
    assert answer["author"] == {"id": agent["id"], "kind": "agent"}
    assert answer["id"] == str(uuid.uuid5(uuid.UUID(agent["id"]), asked["id"]))
    assert answer["text"] == "outside (outside the appliance) read: outside what is new?"
    assert answer["mentions"] == []


def test_the_example_tails_the_thread_live(stack: AgentStack, member: Member,
                                           outside: tuple[dict[str, Any], str]) -> None:
    agent, api_key = outside
    thread = member.thread()
    process = example(stack, api_key, thread, "--for-seconds", "30")
    try:
        wait_for(lambda: stack.sql("SELECT count(*) FROM audit.events WHERE action = 'auth.api_key_exchanged' "
                                   "AND actor = %s", [agent["id"]]) != [(0,)])
        asked = member.post(thread, "@outside are you live?")
        [answer] = wait_reply(member, thread, asked["id"])
        assert answer["author"]["id"] == agent["id"]
    finally:
        stop_process(process, signal.SIGTERM)  # type: ignore[arg-type]


def test_the_example_needs_a_key_and_never_takes_it_as_an_argument(stack: AgentStack, member: Member) -> None:
    thread = member.thread()
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_API_KEY"}
    missing = subprocess.run([sys.executable, str(EXAMPLE), "--gateway", stack.gateway.url, "--thread", thread,
                              "--name", "outside", "--once"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no API key" in missing.stderr
    assert "--api-key " not in Path(EXAMPLE).read_text()
