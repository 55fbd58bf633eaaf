"""kill -9 of the gateway process: acknowledged entries and their activations survive, nothing is duplicated."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from tests.support.stack import (
    Recorded,
    RecordingServer,
    StreamsServer,
    TenantEnv,
    recording_server,
    send_json,
    start_gateway_process,
    stop_process,
    streams_server,
)

pytestmark = pytest.mark.slow


@dataclass
class CrashStack:
    env: TenantEnv
    streams: StreamsServer

    def client(self, principal: uuid.UUID) -> httpx.Client:
        return httpx.Client(base_url=self.env.gateway_url(), timeout=30,
                            headers={"Authorization": f"Bearer {self.env.token(principal)}"})

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.env.superuser() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def crash_stack(env: TenantEnv) -> Iterator[CrashStack]:
    with streams_server(env.tenant.port("streams"), env.base / "streams") as streams:
        yield CrashStack(env, streams)


def accept_all(server: RecordingServer, record: Recorded, handler: BaseHTTPRequestHandler) -> None:
    send_json(handler, 200, {"ok": True})


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_activation_survives_a_gateway_kill_9(crash_stack: CrashStack) -> None:
    env = crash_stack.env
    gateway = start_gateway_process(env)
    principal = uuid.uuid4()
    try:
        with crash_stack.client(principal) as client:
            house = client.post("/api/houses", json={"name": "h"}).json()["data"]["id"]
            agent = client.post("/api/agents", json={"house_id": house, "name": "echo", "handler": "echo"}).json()
            thread = client.post("/api/threads", json={"house_id": house}).json()["data"]["id"]
            entry_id = str(uuid.uuid4())
            posted = client.post(f"/api/threads/{thread}/entries", json={"id": entry_id, "text": "@echo wake up"})
            assert posted.status_code == 201
        # The agent workers are down: the dispatcher tries (maybe mid-delivery when killed: its lease brings
        # the activation back) or has already scheduled a retry.
        wait_for(lambda: crash_stack.sql("SELECT attempts FROM appliance.outbox WHERE entry_id = %s",
                                         [entry_id])[0][0] >= 1)
    finally:
        stop_process(gateway, signal.SIGKILL)
    with recording_server(accept_all, port=env.tenant.port("agents")) as worker:
        gateway = start_gateway_process(env, "gateway-restarted.log")
        try:
            wait_for(lambda: [r for r in worker.requests if r.path.startswith("/activate/")])
            wait_for(lambda: crash_stack.sql("SELECT state FROM appliance.outbox WHERE entry_id = %s",
                                             [entry_id]) == [("delivered",)])
        finally:
            stop_process(gateway)
    activation = next(r for r in worker.requests if r.path.startswith("/activate/"))
    assert activation.path == f"/activate/{agent['data']['id']}"
    stream = httpx.get(f"{crash_stack.streams.url}/thread-{thread}", params={"offset": "-1"}).json()
    assert [m["id"] for m in stream] == [entry_id]


def test_entries_posted_through_a_kill_9_end_up_exactly_once(crash_stack: CrashStack) -> None:
    """Writers keep posting (and retrying what was not acknowledged) while the gateway is killed and restarted."""
    env = crash_stack.env
    principal = uuid.uuid4()
    gateway = start_gateway_process(env)
    with crash_stack.client(principal) as client:
        house = client.post("/api/houses", json={"name": "h"}).json()["data"]["id"]
        thread = client.post("/api/threads", json={"house_id": house}).json()["data"]["id"]
    entries = [str(uuid.uuid4()) for _ in range(120)]
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def writer(share: list[str]) -> None:
        with crash_stack.client(principal) as client:
            for entry_id in share:
                while not stop.is_set():
                    try:
                        response = client.post(f"/api/threads/{thread}/entries",
                                               json={"id": entry_id, "text": f"entry {entry_id}"}, timeout=10)
                    except httpx.HTTPError:
                        time.sleep(0.05)
                        continue
                    if response.status_code in (200, 201):
                        with lock:
                            acknowledged.add(entry_id)
                        break
                    time.sleep(0.05)

    writers = [threading.Thread(target=writer, args=(entries[i::4],)) for i in range(4)]
    for w in writers:
        w.start()
    try:
        wait_for(lambda: len(acknowledged) >= 30)
        stop_process(gateway, signal.SIGKILL)
        killed_at = len(acknowledged)
        time.sleep(0.5)
        gateway = start_gateway_process(env, "gateway-after-burst.log")
        for w in writers:
            w.join(120)
    finally:
        stop.set()
        stop_process(gateway)
    assert killed_at < len(entries) and acknowledged == set(entries)
    stream = httpx.get(f"{crash_stack.streams.url}/thread-{thread}", params={"offset": "-1"}).json()
    ids = [m["id"] for m in stream]
    assert sorted(ids) == sorted(entries), "every entry exactly once"
    states = crash_stack.sql("SELECT state, count(*) FROM appliance.thread_entries WHERE thread_id = %s "
                             "GROUP BY state", [thread])
    assert states == [("appended", len(entries))]
