"""The gateway's one listening connection (appliance/gateway/core/listener.py), against a real Postgres: each
follower hears its own channels, all of them on one backend, and is told when the connection goes and comes back.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.gateway.core.listener import Follower, Listener
from tests.gateway.conftest import database, gateway_backends
from tests.support.stack import TenantEnv


class Heard:
    def __init__(self, channels: tuple[str, ...]) -> None:
        self.events: list[tuple[str, str]] = []
        self.follower = Follower(channels, lambda channel, payload: self.events.append((channel, payload)),
                                 lambda: self.events.append(("up", "")), lambda why: self.events.append(("down", why)))

    async def until(self, event: tuple[str, str], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while event not in self.events:
            assert time.monotonic() < deadline, f"{event} not heard: {self.events}"
            await asyncio.sleep(0.02)


def listening_backends(env: TenantEnv) -> list[int]:
    return gateway_backends(env, "LISTEN %")


def notify(env: TenantEnv, channel: str, payload: str) -> None:
    with env.superuser() as su:
        su.execute("SELECT pg_notify(%s, %s)", (channel, payload))


def test_each_follower_hears_its_channels_on_one_connection_and_is_told_when_it_comes_back(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env)
        listener = Listener(db.dedicated)
        first, second = Heard(("alpha", "shared")), Heard(("beta", "shared"))
        listener.follow(first.follower)
        listener.follow(second.follower)
        listener.start()
        try:
            with pytest.raises(RuntimeError):  # its channels are listened to when it connects
                listener.follow(Heard(("late",)).follower)
            await first.until(("up", ""))
            await second.until(("up", ""))
            assert listener.listening
            backends = await asyncio.to_thread(listening_backends, env)
            assert len(backends) == 1  # one connection for every channel

            await asyncio.to_thread(notify, env, "alpha", "a1")
            await asyncio.to_thread(notify, env, "beta", "b1")
            await asyncio.to_thread(notify, env, "shared", "s1")
            await first.until(("shared", "s1"))
            await second.until(("shared", "s1"))
            assert [e for e in first.events if e[0] != "up"] == [("alpha", "a1"), ("shared", "s1")]
            assert [e for e in second.events if e[0] != "up"] == [("beta", "b1"), ("shared", "s1")]

            # Its backend ends: both are told, and told again once it listens on a new one.
            first.events.clear()
            second.events.clear()
            with env.superuser() as su:
                su.execute("SELECT pg_terminate_backend(%s)", (backends[0],))
            await first.until(("down", "connection closed"))
            await second.until(("down", "connection closed"))
            await first.until(("up", ""))
            await second.until(("up", ""))
            assert (await asyncio.to_thread(listening_backends, env)) != backends
            await asyncio.to_thread(notify, env, "alpha", "a2")
            await first.until(("alpha", "a2"))
        finally:
            await listener.stop()
            await db.close()
        assert not listener.listening
        assert first.events[-1] == ("down", "stopped")

    asyncio.run(scenario())


def test_nobody_following_means_no_connection(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env)
        listener = Listener(db.dedicated)
        listener.start()
        await asyncio.sleep(0.3)
        assert not listener.listening
        assert await asyncio.to_thread(listening_backends, env) == []
        await listener.stop()
        await db.close()

    asyncio.run(scenario())
