"""A real stack for agent worker tests: a provisioned tenant on a throwaway Postgres, the streams server, the
gateway (in-process uvicorn), and `appliance agents serve` as its own process (so it can be killed by PID), with a
tiny third-party handler distribution (a dist-info in a temp dir on its PYTHONPATH)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance.agents.models import reply_id
from appliance.config import AgentsSettings, TenantConfig
from appliance.gateway.domain.outbox import activation_payload
from tests.support.paths import APPLIANCE_BIN, REPO
from tests.support.pg import PgCluster
from tests.support.stack import (
    InProcessGateway,
    StreamsServer,
    TenantEnv,
    gateway_in_process,
    make_tenant,
    provision,
    remove_base,
    stop_process,
    streams_server,
    temp_base,
    wait_http,
)

# Short bounds so failure paths finish quickly in tests; the defaults are in roles/agents/defaults/main.yml.
TEST_AGENTS: dict[str, Any] = {
    "handler_timeout_s": 3,
    "webhook_timeout_s": 1,
    "webhook_retries": 1,
    "webhook_max_response_bytes": 4096,
    "max_concurrency": 8,
    "max_concurrency_per_agent": 2,
}

PLUGIN_MODULE = '''
"""Third-party agent handlers for the tests, registered through the `appliance.agents` entry-point group."""
import asyncio
import time
from pathlib import Path

from appliance.agents.handlers import HandlerError, Reply


async def shout(ctx):
    count = ctx.state.get("count", 0) + 1
    ctx.state.set("count", count)
    return Reply(ctx.entry["text"].upper(), data={"count": count, "history": len(ctx.history)})


async def sleepy(ctx):
    marker = ctx.agent.config.get("started_file")
    if marker:
        with open(marker, "a") as fh:
            fh.write(str(ctx.event.entry_id) + "\\n")
    await asyncio.sleep(float(ctx.agent.config.get("sleep_s", 1)))
    return "woke up"


def blocking(ctx):
    time.sleep(float(ctx.agent.config.get("sleep_s", 1)))
    return Reply("done blocking")


async def broken(ctx):
    raise RuntimeError("internal detail that must not reach the thread")


async def explains(ctx):
    raise HandlerError("model_offline", "the model is offline")


async def stateful_then_broken(ctx):
    ctx.state.set("poisoned", True)
    raise RuntimeError("after a state change")


async def not_a_reply(ctx):
    return 42


async def suicidal(ctx):
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
'''

PLUGIN_HANDLERS = ("shout", "sleepy", "blocking", "broken", "explains", "stateful_then_broken", "not_a_reply",
                   "suicidal")


def write_plugin(directory: Path) -> Path:
    """A minimal installed distribution: the module and its dist-info with an entry_points.txt."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "appliance_agents_testkit.py").write_text(PLUGIN_MODULE)
    info = directory / "appliance_agents_testkit-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: appliance-agents-testkit\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[appliance.agents]\n" + "".join(f"{name} = appliance_agents_testkit:{name}\n" for name in PLUGIN_HANDLERS)
    )
    return directory


def agents_tenant(base: Path, pg: PgCluster | None = None, tenant_id: str = "acme", slot: int = 1,
                  agents: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None) -> TenantEnv:
    """make_tenant with the agents settings overridden (host.json rewritten, as the deploy would write it)."""
    env = make_tenant(base, tenant_id=tenant_id, slot=slot, pg=pg, gateway=gateway)
    settings = AgentsSettings.build({**TEST_AGENTS, **(agents or {})})
    tenant: TenantConfig = env.tenant.model_copy(update={"agents": settings})
    host = env.host.model_copy(update={"tenants": (tenant,)})
    (host.common.config_dir / "host.json").write_text(host.model_dump_json(indent=2))
    return TenantEnv(tenant, host, base, pg)


class WorkerProcess:
    """`appliance agents serve --tenant` as the service runs it, started and stopped by PID."""

    def __init__(self, env: TenantEnv, plugin_dir: Path | None) -> None:
        self.env = env
        self.plugin_dir = plugin_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log = env.base / "agents.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env.tenant.port('agents')}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        environment = {**os.environ, "APPLIANCE_CONFIG_DIR": str(self.env.config_dir)}
        if self.plugin_dir is not None:
            environment["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.plugin_dir), environment.get("PYTHONPATH", "")) if p)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(APPLIANCE_BIN), "agents", "serve", "--tenant", self.env.tenant.id, "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=environment,
            )
        wait_http(self.url + "/healthz", process=self.process)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def worker_process(env: TenantEnv, plugin_dir: Path | None) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, plugin_dir)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@dataclass
class Member:
    """A user of the tenant with a house and a client to its gateway."""

    id: uuid.UUID
    http: httpx.Client
    house: str

    def agent(self, name: str, handler: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post("/api/agents", json={"house_id": self.house, "name": name, "handler": handler,
                                                       "config": config or {}})
        assert response.status_code == 201, response.text
        return dict(response.json()["data"])

    def thread(self) -> str:
        response = self.http.post("/api/threads", json={"house_id": self.house, "title": "t"})
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])

    def post(self, thread: str, text: str, entry_id: str | None = None) -> dict[str, Any]:
        body = {"id": entry_id or str(uuid.uuid4()), "text": text}
        response = self.http.post(f"/api/threads/{thread}/entries", json=body)
        assert response.status_code in (200, 201), response.text
        return {**body, **response.json()["data"]}

    def read(self, thread: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/threads/{thread}/stream", params={"offset": "-1"})
        assert response.status_code == 200, response.text
        return list(response.json())


@dataclass
class AgentStack:
    env: TenantEnv
    streams: StreamsServer
    gateway: InProcessGateway
    worker: WorkerProcess
    plugin_dir: Path

    @property
    def tenant(self) -> TenantConfig:
        return self.env.tenant

    def member(self) -> Member:
        principal = uuid.uuid4()
        http = httpx.Client(base_url=self.gateway.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.env.token(principal)}"})
        response = http.post("/api/houses", json={"name": "house"})
        assert response.status_code == 201, response.text
        return Member(principal, http, str(response.json()["data"]["id"]))

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.env.superuser() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def internal_token(self) -> str:
        return self.tenant.read_secret("agents_internal_token")

    def activate(self, agent_id: str, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.internal_token()}"}
        return httpx.post(f"{self.worker.url}/activate/{agent_id}", json=body, headers=headers, timeout=30,
                          **kwargs)

    def set_webhooks(self, endpoints: dict[str, Any]) -> None:
        path = self.tenant.agents_data / "webhooks.json"
        path.write_text(json.dumps(endpoints))
        path.chmod(0o600)


@contextlib.contextmanager
def agent_stack(pg: PgCluster, agents: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None
                ) -> Iterator[AgentStack]:
    base = temp_base("appliance-agents-")
    try:
        env = agents_tenant(base, pg, agents=agents, gateway=gateway)
        provision(env)
        plugin_dir = write_plugin(base / "plugin")
        with streams_server(env.tenant.port("streams"), base / "streams") as streams, \
                gateway_in_process(env) as gateway, worker_process(env, plugin_dir) as worker:
            yield AgentStack(env, streams, gateway, worker, plugin_dir)
    finally:
        remove_base(base)


# -- reading the outcome -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def replies_to(messages: list[dict[str, Any]], entry_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("reply_to") == entry_id]


def wait_reply(member: Member, thread: str, entry_id: str, count: int = 1, timeout: float = 20.0
               ) -> list[dict[str, Any]]:
    return list(wait_for(lambda: (lambda r: r if len(r) >= count else None)(
        replies_to(member.read(thread), entry_id)), timeout=timeout))


def expected_reply_id(agent: dict[str, Any], entry_id: str) -> str:
    return str(reply_id(uuid.UUID(agent["id"]), uuid.UUID(entry_id)))


def activation_body(agent: dict[str, Any], thread: str, entry: dict[str, Any], mentioned_by: uuid.UUID,
                    activation_id: int = 1, attempt: int = 1) -> dict[str, Any]:
    """An activation as the gateway's dispatcher sends it: its own builder, fed an outbox row."""
    row = {"id": activation_id, "attempts": attempt, "house_id": agent["house_id"], "thread_id": uuid.UUID(thread),
           "entry_id": entry["id"], "next_offset": entry["offset"], "mentioned_by": mentioned_by,
           "agent_name": agent["name"]}
    return activation_payload(row, {**agent, "environment_id": agent.get("environment_id"),
                                    "config": agent.get("config") or {}}, [])
