"""Fixtures for gateway tests: one real stack per module (Postgres, streams server, gateway under uvicorn)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from appliance.gateway.core.config import Settings
from appliance.gateway.core.db import APPLICATION_NAME, IDLE_CONNECTION_S, Database
from tests.support.pg import PgCluster
from tests.support.stack import (
    InProcessGateway,
    StreamsServer,
    TenantEnv,
    gateway_in_process,
    make_tenant,
    provision,
    remove_base,
    streams_server,
    temp_base,
)


@dataclass
class Stack:
    env: TenantEnv
    streams: StreamsServer
    gateway: InProcessGateway

    @property
    def url(self) -> str:
        return self.gateway.url

    def user(self, principal_id: uuid.UUID | None = None) -> User:
        principal = principal_id or uuid.uuid4()
        return User(principal, httpx.Client(base_url=self.url, timeout=30,
                                             headers={"Authorization": f"Bearer {self.env.token(principal)}"}))

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.env.superuser() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def flush_audit(self) -> None:
        """Wait for the gateway's batched audit events to be committed."""
        runtime = self.gateway.app.state.gateway
        assert runtime.loop is not None
        asyncio.run_coroutine_threadsafe(runtime.audit.flush(), runtime.loop).result(10)


@dataclass
class User:
    id: uuid.UUID
    http: httpx.Client

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(path, json=body)

    def patch(self, path: str, body: Any) -> httpx.Response:
        return self.http.patch(path, json=body)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def house(self, name: str = "house") -> str:
        response = self.post("/api/houses", {"name": name})
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])

    def thread(self, house_id: str, title: str = "t") -> str:
        response = self.post("/api/threads", {"house_id": house_id, "title": title})
        assert response.status_code == 201, response.text
        return str(response.json()["data"]["id"])


def build_stack(pg: PgCluster, gateway: dict[str, Any] | None = None) -> Iterator[Stack]:
    base = temp_base()
    try:
        env = make_tenant(base, pg=pg, gateway=gateway)
        provision(env)
        with streams_server(env.tenant.port("streams"), base / "streams") as streams, \
                gateway_in_process(env) as gw:
            yield Stack(env, streams, gw)
    finally:
        remove_base(base)


@pytest.fixture(scope="module")
def stack(pg_module: PgCluster) -> Iterator[Stack]:
    yield from build_stack(pg_module)


@pytest.fixture
def member(stack: Stack) -> Iterator[tuple[User, str, str]]:
    """A user who owns a house with one thread: (user, house id, thread id)."""
    user = stack.user()
    house = user.house()
    yield user, house, user.thread(house)


@pytest.fixture(scope="module")
def env(pg_module: PgCluster) -> Iterator[TenantEnv]:
    """A provisioned tenant database and nothing running: for tests of the gateway's own pieces."""
    base = temp_base()
    try:
        env = make_tenant(base, pg=pg_module)
        provision(env)
        yield env
    finally:
        remove_base(base)


def database(env: TenantEnv, size: int = 2, idle_s: float = IDLE_CONNECTION_S) -> Database:
    """The gateway's connection helper for `env`'s database, as the gateway makes it (its role and password)."""
    secret = env.tenant.secret_path("db_gateway_password")
    return Database(Settings.from_tenant(env.tenant).db_conninfo, lambda: secret.read_text().strip(), size,
                    idle_s=idle_s)


def gateway_backends(env: TenantEnv, query_like: str = "%") -> list[int]:
    """The Postgres backends of gateway connections (those whose last statement is like `query_like`)."""
    with env.superuser() as su:
        rows = su.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query ILIKE %s",
                          (APPLICATION_NAME, query_like)).fetchall()
    return [int(row[0]) for row in rows]
