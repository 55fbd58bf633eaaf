"""Mentions end to end: gateway → outbox → `appliance agents serve` → reply appended to the thread's stream."""

from __future__ import annotations

import time

from tests.support.agents import AgentStack, Member, expected_reply_id, replies_to, wait_reply


def test_echo_replies_into_the_stream_tail(stack: AgentStack, member: Member) -> None:
    echo = member.agent("echo", "echo")
    thread = member.thread()
    # A live reader through the gateway, positioned after everything so far: it sees only what comes next.
    tail = member.http.get(f"/api/threads/{thread}/stream", params={"offset": "now"}).headers["stream-next-offset"]
    posted = member.post(thread, "@echo hello there")
    seen: list[dict[str, object]] = []
    offset = tail
    deadline = time.monotonic() + 20
    while not replies_to(seen, posted["id"]) and time.monotonic() < deadline:
        response = member.http.get(f"/api/threads/{thread}/stream", params={"offset": offset, "live": "long-poll"})
        if response.status_code == 200:
            seen.extend(response.json())
        offset = response.headers.get("stream-next-offset", offset)
    [reply] = replies_to(seen, posted["id"])
    assert reply["id"] == expected_reply_id(echo, posted["id"])
    assert reply["author"] == {"id": echo["id"], "kind": "agent"}
    assert reply["kind"] == "message" and reply["text"] == "@echo hello there"
    assert reply["thread_id"] == thread and reply["type"] == "entry"
    assert stack.sql("SELECT state FROM appliance.outbox WHERE entry_id = %s", [posted["id"]]) == [("delivered",)]


def test_two_mentions_in_one_entry_wake_two_agents(member: Member) -> None:
    echo = member.agent("echo", "echo")
    shout = member.agent("shout", "shout")
    thread = member.thread()
    posted = member.post(thread, "@echo and @shout, both of you")
    replies = wait_reply(member, thread, posted["id"], count=2)
    by_author = {r["author"]["id"]: r for r in replies}
    assert set(by_author) == {echo["id"], shout["id"]}
    assert by_author[shout["id"]]["text"] == "@ECHO AND @SHOUT, BOTH OF YOU"
    assert by_author[shout["id"]]["data"] == {"count": 1, "history": 1}


def test_unknown_and_deleted_agents_are_recorded_not_retried(stack: AgentStack, member: Member) -> None:
    gone = member.agent("gone", "echo")
    assert member.http.delete(f"/api/agents/{gone['id']}").status_code == 200
    member.agent("echo", "echo")
    thread = member.thread()
    posted = member.post(thread, "@nobody @gone and @echo")
    wait_reply(member, thread, posted["id"])
    rows = stack.sql("SELECT agent_name, state, last_error, attempts FROM appliance.outbox WHERE entry_id = %s "
                     "ORDER BY agent_name", [posted["id"]])
    assert [(r[0], r[1], r[2]) for r in rows] == [("echo", "delivered", None), ("gone", "gave_up", "unknown agent"),
                                                  ("nobody", "gave_up", "unknown agent")]
    time.sleep(1.5)  # longer than the dispatcher's poll and first backoff: nothing is tried again
    assert stack.sql("SELECT agent_name, state, attempts FROM appliance.outbox WHERE entry_id = %s "
                     "ORDER BY agent_name", [posted["id"]]) == [(r[0], r[1], r[3]) for r in rows]
    assert len(replies_to(member.read(thread), posted["id"])) == 1


def test_the_agent_keeps_state_between_activations(member: Member) -> None:
    member.agent("shout", "shout")
    thread = member.thread()
    counts = []
    for text in ("@shout one", "@shout two", "@shout three"):
        posted = member.post(thread, text)
        [reply] = wait_reply(member, thread, posted["id"])
        counts.append(reply["data"]["count"])
    assert counts == [1, 2, 3]


def test_a_reply_sees_the_history_up_to_its_mention(member: Member) -> None:
    member.agent("shout", "shout")
    thread = member.thread()
    for i in range(3):
        member.post(thread, f"plain message {i}")
    posted = member.post(thread, "@shout now")
    [reply] = wait_reply(member, thread, posted["id"])
    assert reply["data"]["history"] == 4
