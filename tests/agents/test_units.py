"""The worker's pieces without servers: the agent store, handler state, thread views, the registry, the
webhook endpoints file and the activation model."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.agents import threads
from appliance.agents.handlers import HandlerError, HandlerRegistry, HandlerUnavailable
from appliance.agents.handlers.webhook import load_endpoints
from appliance.agents.models import ActivationRequest
from appliance.agents.store import AgentState, AgentStore, QueueFull, store_path
from appliance.agents.threads import ThreadViews
from appliance.gateway.streams import StreamMissing


def activation(agent_id: uuid.UUID | None = None, entry_id: uuid.UUID | None = None,
               updated_at: str = "2026-01-01T00:00:00+00:00", config: dict[str, Any] | None = None) -> dict[str, Any]:
    house, thread = uuid.uuid4(), uuid.uuid4()
    return {
        "agent": {"id": str(agent_id or uuid.uuid4()), "house_id": str(house), "name": "echo", "handler": "echo",
                  "config": config or {}, "updated_at": updated_at},
        "configs": {"model": "small"},
        "event": {"type": "mention", "activation_id": 1, "attempt": 1, "house_id": str(house),
                  "thread_id": str(thread), "stream": f"thread-{thread}", "entry_id": str(entry_id or uuid.uuid4()),
                  "offset": "0000000000000000_0000000000000100", "mentioned_by": str(uuid.uuid4())},
    }


@pytest.fixture
def store(tmp_path: Path) -> AgentStore:
    return AgentStore(store_path(tmp_path, uuid.uuid4()))


# -- the store -----------------------------------------------------------------------------------------------


def test_the_store_file_is_shared_with_its_group_alone_and_named_by_the_agent(tmp_path: Path) -> None:
    """0660: the agents' dir's group is the tenant's user, whose backups read it (appliance.host.users); with
    the deployed umask (007) nobody else gets a bit."""
    agent = uuid.uuid4()
    path = store_path(tmp_path, agent)
    assert path == tmp_path / f"agent-{agent}.sqlite3"
    umask = os.umask(0o007)  # as deployed (appliance/agents/service.py)
    try:
        AgentStore(path).close()
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o660
    with pytest.raises(ValueError):
        store_path(tmp_path, "../../etc/passwd")  # type: ignore[arg-type]


def test_an_entry_is_accepted_once(store: AgentStore) -> None:
    body = activation()
    entry = body["event"]["entry_id"]
    first = store.accept(entry, body["event"]["thread_id"], body, max_open=10)
    again = store.accept(entry, body["event"]["thread_id"], body, max_open=10)
    assert (first.fresh, again.fresh, again.state) == (True, False, "pending")
    row = store.row(entry)
    assert row is not None and row.deliveries == 2 and row.activation == body


def test_a_full_queue_refuses_new_entries_but_not_duplicates(store: AgentStore) -> None:
    bodies = [activation() for _ in range(3)]
    for body in bodies[:2]:
        store.accept(body["event"]["entry_id"], body["event"]["thread_id"], body, max_open=2)
    with pytest.raises(QueueFull):
        store.accept(bodies[2]["event"]["entry_id"], bodies[2]["event"]["thread_id"], bodies[2], max_open=2)
    assert store.accept(bodies[0]["event"]["entry_id"], "t", bodies[0], max_open=2).fresh is False
    assert store.count_open() == 2


def test_the_freshest_config_is_kept_whatever_the_delivery_order(store: AgentStore) -> None:
    agent = uuid.uuid4()
    newer = activation(agent, updated_at="2026-01-02T00:00:00+00:00", config={"v": 2})
    older = activation(agent, updated_at="2026-01-01T00:00:00.5+00:00", config={"v": 1})
    store.accept(newer["event"]["entry_id"], "t", newer, max_open=10)
    store.accept(older["event"]["entry_id"], "t", older, max_open=10)
    runs, last, configs = store.claim(older["event"]["entry_id"])
    assert runs == 1 and last is not None and last["config"] == {"v": 2} and configs == {"model": "small"}


def test_runs_are_counted_and_a_shutdown_does_not_count(store: AgentStore) -> None:
    body = activation()
    entry = body["event"]["entry_id"]
    store.accept(entry, "t", body, max_open=10)
    assert store.claim(entry)[0] == 1
    store.uncount_run(entry)
    assert store.claim(entry)[0] == 1 and store.claim(entry)[0] == 2


def test_state_changes_are_committed_only_with_the_prepared_reply(store: AgentStore) -> None:
    body = activation()
    entry = body["event"]["entry_id"]
    store.accept(entry, "t", body, max_open=10)
    state = AgentState(store)
    state.set("count", 1)
    state.set("gone", True)
    state.delete("gone")
    assert state.get("count") == 1 and state.get("gone", "absent") == "absent" and list(state.keys()) == ["count"]
    assert AgentState(store).get("count") is None  # nothing committed yet
    store.prepare(entry, {"id": "reply"}, state.changes)
    assert AgentState(store).get("count") == 1
    row = store.row(entry)
    assert row is not None and row.state == "prepared" and row.reply == {"id": "reply"}
    store.finish(entry, "replied", "0_1")
    row = store.row(entry)
    assert row is not None and (row.state, row.outcome, row.next_offset) == ("done", "replied", "0_1")


def test_state_refuses_what_it_cannot_keep(store: AgentStore) -> None:
    state = AgentState(store)
    with pytest.raises(ValueError):
        state.set("", 1)
    with pytest.raises(ValueError):
        state.set("k" * 201, 1)
    with pytest.raises(ValueError):
        state.set("nan", float("nan"))
    with pytest.raises(ValueError):
        state.set("big", "x" * (1 << 20))


def test_due_skips_running_and_postponed_rows(store: AgentStore) -> None:
    bodies = [activation() for _ in range(3)]
    for body in bodies:
        store.accept(body["event"]["entry_id"], "t", body, max_open=10)
    ids = [b["event"]["entry_id"] for b in bodies]
    store.retry_later(ids[1], 4_000_000_000.0)
    rows, later = store.due({ids[0]}, 5)
    assert [r.entry_id for r in rows] == [ids[2]] and later == 4_000_000_000.0
    assert store.due(set(), 0)[0] == []


def test_prune_keeps_unfinished_rows(store: AgentStore) -> None:
    done, pending = activation(), activation()
    for body in (done, pending):
        store.accept(body["event"]["entry_id"], "t", body, max_open=10)
    store.finish(done["event"]["entry_id"], "replied", "0_1")
    assert store.prune(older_than_s=-1) == 1
    assert store.row(done["event"]["entry_id"]) is None and store.row(pending["event"]["entry_id"]) is not None


def test_accepted_activations_survive_a_reopen(tmp_path: Path) -> None:
    path = store_path(tmp_path, uuid.uuid4())
    body = activation()
    AgentStore(path).accept(body["event"]["entry_id"], "t", body, max_open=10)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert AgentStore(path).count_open() == 1


# -- the activation model ---------------------------------------------------------------------------------------


def test_the_reply_id_is_derived_from_agent_and_entry() -> None:
    body = ActivationRequest.model_validate(activation())
    assert body.reply_id() == uuid.uuid5(body.agent.id, str(body.event.entry_id))
    assert ActivationRequest.model_validate(activation()).reply_id() != body.reply_id()


def test_unknown_fields_are_ignored_and_inconsistent_events_refused() -> None:
    body = activation()
    body["event"]["future_field"] = 1
    ActivationRequest.model_validate(body)
    body["event"]["stream"] = "thread-" + str(uuid.uuid4())
    with pytest.raises(ValidationError):
        ActivationRequest.model_validate(body)


# -- thread views ---------------------------------------------------------------------------------------------


class FakeStreams:
    """A stream in memory with byte offsets like the server's, counting the reads it answers."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reads: list[str] = []
        self.missing = False

    def offset(self, count: int) -> str:
        return f"0000000000000000_{count:016d}"

    def add(self, count: int) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        self.messages.extend({"id": i, "text": "x"} for i in ids)
        return ids

    async def read_after(self, thread_id: uuid.UUID, offset: str) -> tuple[list[Any], str]:
        self.reads.append(offset)
        if self.missing:
            raise StreamMissing(404, "gone")
        start = 0 if offset == "-1" else int(offset.split("_")[1])
        return self.messages[start:], self.offset(len(self.messages))


def test_thread_views_read_only_what_is_new() -> None:
    streams = FakeStreams()
    views = ThreadViews(streams)  # type: ignore[arg-type]
    thread = uuid.uuid4()
    first = streams.add(5)
    around = asyncio.run(views.around(thread, uuid.UUID(first[2])))
    assert around.entry is not None and around.entry["id"] == first[2]
    assert [m["id"] for m in around.history] == first[:3] and [m["id"] for m in around.after] == first[3:]
    more = streams.add(3)
    around = asyncio.run(views.around(thread, uuid.UUID(more[0])))
    assert streams.reads == ["-1", streams.offset(5)]
    assert [m["id"] for m in around.history] == first + more[:1] and around.tail == streams.offset(8)


def test_an_entry_older_than_the_window_is_read_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "WINDOW", 4)
    streams = FakeStreams()
    views = ThreadViews(streams)  # type: ignore[arg-type]
    thread = uuid.uuid4()
    ids = streams.add(10)
    asyncio.run(views.around(thread, uuid.UUID(ids[-1])))
    around = asyncio.run(views.around(thread, uuid.UUID(ids[1])))
    assert streams.reads == ["-1", streams.offset(10), "-1"]
    assert [m["id"] for m in around.history] == ids[:2] and len(around.after) == 8


def test_an_entry_not_in_the_thread_gives_the_whole_thread_as_after() -> None:
    streams = FakeStreams()
    views = ThreadViews(streams)  # type: ignore[arg-type]
    ids = streams.add(3)
    around = asyncio.run(views.around(uuid.uuid4(), uuid.uuid4()))
    assert around.entry is None and around.history == [] and [m["id"] for m in around.after] == ids


def test_views_are_bounded_and_dropped_with_their_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "MAX_THREADS", 2)
    streams = FakeStreams()
    views = ThreadViews(streams)  # type: ignore[arg-type]
    ids = streams.add(1)
    for _ in range(4):
        asyncio.run(views.around(uuid.uuid4(), uuid.UUID(ids[0])))
    assert len(views) == 2
    streams.missing = True
    with pytest.raises(StreamMissing):
        asyncio.run(views.around(uuid.uuid4(), uuid.UUID(ids[0])))
    assert len(views) == 2


# -- handlers ----------------------------------------------------------------------------------------------------


def test_built_in_names_cannot_be_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    def mine(ctx: Any) -> str:
        return "mine"

    def impostor(ctx: Any) -> str:
        return "impostor"

    # A third-party package registering handlers under the built-in names.
    from importlib.metadata import EntryPoint

    import appliance.agents.handlers as handlers_module

    offered = [EntryPoint(name, "tests.agents.test_units:impostor", handlers_module.ENTRY_POINT_GROUP)
               for name in ("echo", "external")]
    monkeypatch.setattr(handlers_module, "entry_points",
                        lambda group, name=None: [ep for ep in offered if ep.group == group
                                                  and (name is None or ep.name == name)])
    registry = HandlerRegistry({"echo": mine})
    assert registry.get("echo") is mine
    with pytest.raises(HandlerUnavailable):
        registry.get("external")
    with pytest.raises(HandlerUnavailable):
        registry.get("no-such-handler-anywhere")
    assert {"echo", "webhook", "external"} <= set(registry.names())


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"x": "http://a"}', '{"x": {"url": "ftp://a"}}', '{"x": {"url": "http://a", "headers": 1}}',
    '{"x": {"url": "http://a", "headers": {"a": 1}}}',
])
def test_malformed_webhook_endpoints_are_refused_without_echoing_them(tmp_path: Path, content: str) -> None:
    (tmp_path / "webhooks.json").write_text(content)
    with pytest.raises(HandlerError) as refused:
        load_endpoints(tmp_path)
    assert refused.value.code == "webhook_misconfigured" and "http://a" not in refused.value.message


def test_webhook_endpoints_load(tmp_path: Path) -> None:
    assert load_endpoints(tmp_path) == {}
    (tmp_path / "webhooks.json").write_text(json.dumps({"m": {"url": "https://m/x", "headers": {"A": "b"}}}))
    endpoint = load_endpoints(tmp_path)["m"]
    assert endpoint.url == "https://m/x" and endpoint.headers == {"A": "b"}
