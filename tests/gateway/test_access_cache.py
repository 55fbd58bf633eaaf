"""The gateway's access cache (appliance/gateway/domain/access_cache.py) and coalesced read grants, on a real stack:
reads that change nothing are decided without Postgres; a change that takes access away made through the
gateway is refused on the very next request after its commit, one made behind its back (psql) as soon as
Postgres has delivered its notification (bounded here at NOTIFIED_WITHIN_S), and while the listening connection
is down nothing is remembered at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.gateway.domain.access_cache import AccessCache
from tests.gateway.conftest import Stack, User, build_stack
from tests.support.pg import PgCluster
from tests.support.stack import RecordingServer, recording_server, send_json


def cache_of(stack: Stack) -> AccessCache:
    cache: AccessCache = stack.gateway.app.state.gateway.access
    return cache


def wait_listening(stack: Stack, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cache_of(stack).stats()["listening"]:
        assert time.monotonic() < deadline, "the access cache never listened"
        time.sleep(0.05)


# Postgres delivers a notification at commit to a listening backend, which writes it to the gateway's socket;
# on a loaded 2-CPU host that takes a few milliseconds at worst. Generous, so the bound is not the test's subject.
NOTIFIED_WITHIN_S = 0.5


def refused_soon(check: Any) -> float:
    """Seconds until `check()` is true (the change has reached the gateway), failing past NOTIFIED_WITHIN_S."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < NOTIFIED_WITHIN_S, "a change made with psql was still allowed"
        time.sleep(0.005)
    return time.monotonic() - started


def read(user: User, thread: str) -> int:
    return user.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}).status_code


def invited_member(stack: Stack, owner: User, house: str) -> User:
    member = stack.user()
    response = owner.post("/api/members", {"house_id": house, "principal_id": str(member.id), "role": "member"})
    assert response.status_code == 201, response.text
    return member


def membership_id(stack: Stack, user: User, house: str) -> str:
    rows = stack.sql("SELECT id FROM public.members WHERE principal_id = %s AND house_id = %s "
                     "AND deleted_at IS NULL", [user.id, house])
    return str(rows[0][0])


@pytest.fixture
def shared(stack: Stack) -> tuple[User, User, str, str]:
    """An owner and a member of a house with a thread, the member's access already remembered."""
    wait_listening(stack)
    owner = stack.user()
    house = owner.house()
    thread = owner.thread(house)
    member = invited_member(stack, owner, house)
    assert read(member, thread) == 200
    return owner, member, house, thread


def test_a_read_that_changes_nothing_asks_postgres_nothing(stack: Stack, shared: tuple[User, User, str, str]
                                                           ) -> None:
    _, member, _, thread = shared
    asked = cache_of(stack).stats()["asked"]
    for _ in range(20):
        assert read(member, thread) == 200
    assert cache_of(stack).stats()["asked"] == asked, "reads with nothing changed went to Postgres"


def test_a_member_removed_through_the_api_is_refused_at_the_next_request(
        stack: Stack, shared: tuple[User, User, str, str]) -> None:
    owner, member, house, thread = shared
    assert owner.delete(f"/api/members/{membership_id(stack, member, house)}").status_code == 200
    assert read(member, thread) == 404


def test_a_change_this_process_commits_is_forgotten_without_its_notification(
        stack: Stack, shared: tuple[User, User, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """With every notification ignored, only the transaction's own mark (set by the same triggers) can make this
    process forget: a member removed and a thread deleted through the API are refused at the next request."""
    owner, member, house, thread = shared
    monkeypatch.setattr(cache_of(stack), "_changed", lambda payload: None)
    other = owner.thread(house)
    assert read(member, other) == 200
    assert owner.patch(f"/api/threads/{other}", {"title": "renamed"}).status_code == 200
    assert cache_of(stack).stats()["threads"] > 0, "a title changes nobody's access: nothing to forget"
    assert owner.delete(f"/api/threads/{other}").status_code == 200
    assert read(member, other) == 404
    assert owner.delete(f"/api/members/{membership_id(stack, member, house)}").status_code == 200
    assert read(member, thread) == 404


def test_a_member_removed_with_psql_is_refused_once_notified(
        stack: Stack, shared: tuple[User, User, str, str]) -> None:
    _, member, house, thread = shared
    stack.sql("UPDATE public.members SET deleted_at = now() WHERE principal_id = %s AND house_id = %s",
              [member.id, house])
    refused_soon(lambda: read(member, thread) == 404)
    assert read(member, thread) == 404


def test_a_deleted_house_or_thread_is_refused_at_the_next_request(
        stack: Stack, shared: tuple[User, User, str, str]) -> None:
    owner, member, house, thread = shared
    other = owner.thread(house)
    assert read(member, other) == 200
    assert owner.delete(f"/api/threads/{other}").status_code == 200
    assert read(member, other) == 404
    assert read(member, thread) == 200
    third = owner.thread(house)
    assert read(member, third) == 200
    stack.sql("UPDATE public.threads SET deleted_at = now() WHERE id = %s", [third])
    refused_soon(lambda: read(member, third) == 404)
    assert owner.delete(f"/api/houses/{house}").status_code == 200
    assert read(member, thread) == 404
    assert read(owner, thread) == 404


def test_a_revoked_api_key_is_refused(stack: Stack, shared: tuple[User, User, str, str]
                                                          ) -> None:
    owner, _, _, thread = shared
    created = owner.post("/api/api_keys", {"name": "ci"})
    assert created.status_code == 201, created.text
    key = created.json()["data"]
    exchanged = stack.anonymous().post("/api/auth/token", json={"api_key": key["key"]})
    assert exchanged.status_code == 200, exchanged.text
    holder = User(owner.id, stack.anonymous())
    holder.http.headers["Authorization"] = f"Bearer {exchanged.json()['access_token']}"
    assert read(holder, thread) == 200
    assert read(holder, thread) == 200
    assert owner.delete(f"/api/api_keys/{key['id']}").status_code == 200
    assert read(holder, thread) == 401
    second = owner.post("/api/api_keys", {"name": "ci"}).json()["data"]
    token = stack.anonymous().post("/api/auth/token", json={"api_key": second["key"]}).json()["access_token"]
    holder.http.headers["Authorization"] = f"Bearer {token}"
    assert read(holder, thread) == 200
    stack.sql("UPDATE public.api_keys SET deleted_at = now() WHERE id = %s", [second["id"]])
    refused_soon(lambda: read(holder, thread) == 401)


def test_while_the_listener_is_down_nothing_is_remembered(stack: Stack, shared: tuple[User, User, str, str]
                                                           ) -> None:
    _, member, house, thread = shared
    # asyncpg's add_listener quotes the channel (LISTEN "access_changed"), psycopg's text did not.
    stack.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %%' "
              "AND application_name = 'appliance-gateway'")
    deadline = time.monotonic() + 10
    # The loss is noticed at the next lookup at the latest (the socket is read before each).
    while cache_of(stack).stats()["listening"]:
        assert read(member, thread) == 200
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stack.sql("UPDATE public.members SET deleted_at = now() WHERE principal_id = %s AND house_id = %s",
              [member.id, house])
    assert read(member, thread) == 404
    wait_listening(stack)
    stack.sql("UPDATE public.members SET deleted_at = NULL WHERE principal_id = %s AND house_id = %s",
              [member.id, house])
    assert read(member, thread) == 200


def test_a_new_member_is_let_in_at_once(stack: Stack) -> None:
    wait_listening(stack)
    owner, newcomer = stack.user(), stack.user()
    house = owner.house()
    thread = owner.thread(house)
    assert read(newcomer, thread) == 404
    # Only grants are remembered, so the refusal above is not: the newcomer is let in at once.
    response = owner.post("/api/members", {"house_id": house, "principal_id": str(newcomer.id), "role": "member"})
    assert response.status_code == 201, response.text
    assert read(newcomer, thread) == 200


# -- the shape proxy: the WHERE follows membership at the next request ------------------------------------------

def _tip(server: RecordingServer, record: Any, handler: Any) -> None:
    send_json(handler, 200, [{"headers": {"control": "up-to-date"}}],
              {"electric-handle": "1-1", "electric-offset": "0_0", "electric-up-to-date": ""})


@pytest.fixture
def engine(stack: Stack) -> Iterator[RecordingServer]:
    with recording_server(_tip, port=stack.env.tenant.port("sync")) as server:
        yield server


def _houses_asked(server: RecordingServer) -> list[str]:
    last = [r for r in server.requests if r.path == "/v1/shape"][-1]
    return sorted(value for name, value in last.query if name.startswith("params["))


def test_a_shape_drops_a_house_at_the_next_request_after_removal(
        stack: Stack, shared: tuple[User, User, str, str], engine: RecordingServer) -> None:
    owner, member, house, _ = shared
    own = member.house()
    assert member.get("/api/shapes/threads", params={"offset": "-1"}).status_code == 200
    assert _houses_asked(engine) == sorted([house, own])
    assert owner.delete(f"/api/members/{membership_id(stack, member, house)}").status_code == 200
    assert member.get("/api/shapes/threads", params={"offset": "-1"}).status_code == 200
    assert _houses_asked(engine) == [own]
    stack.sql("UPDATE public.members SET deleted_at = now() WHERE principal_id = %s AND house_id = %s",
              [member.id, own])

    def dropped() -> bool:
        assert member.get("/api/shapes/threads", params={"offset": "-1"}).status_code == 200
        return _houses_asked(engine) == []
    refused_soon(dropped)


# -- coalesced read grants --------------------------------------------------------------------------------------

# Longer than the streams server's long-poll in these stacks (2 s), so a long-poll ends within one window.
WINDOW_S = 4


@pytest.fixture(scope="module")
def quick_window(pg_module: PgCluster) -> Iterator[Stack]:
    yield from build_stack(pg_module, gateway={"read_grant_window_s": WINDOW_S})


def grants(stack: Stack, user: User) -> list[dict[str, Any]]:
    stack.flush_audit()
    rows = stack.sql("SELECT detail FROM audit.events WHERE actor = %s AND action = 'auth.granted' ORDER BY seq",
                     [str(user.id)])
    return [row[0] for row in rows]


def test_repeated_reads_are_one_grant_and_their_count(quick_window: Stack) -> None:
    stack = quick_window
    owner = stack.user()
    thread = owner.thread(owner.house())
    for _ in range(5):
        assert read(owner, thread) == 200
    assert grants(stack, owner) == [{"access": "thread.read", "live": "no"}]
    # Another live mode is another grant, recorded at once.
    owner.get(f"/api/threads/{thread}/stream", params={"offset": "now", "live": "long-poll"}, timeout=30)
    assert [g["live"] for g in grants(stack, owner)] == ["no", "long-poll"]
    # After the window the count is recorded by the sweep, or with the next identical read, whichever is first.
    time.sleep(WINDOW_S + 0.5)
    assert read(owner, thread) == 200
    recorded = grants(stack, owner)
    assert sum(g.get("repeats", 0) for g in recorded if g["live"] == "no") == 4, recorded


def test_a_count_not_yet_recorded_is_recorded_at_shutdown(pg_module: PgCluster) -> None:
    stacks = build_stack(pg_module, gateway={"read_grant_window_s": 3600})
    stack = next(stacks)
    owner = stack.user()
    thread = owner.thread(owner.house())
    for _ in range(3):
        assert read(owner, thread) == 200
    runtime = stack.gateway.app.state.gateway
    assert runtime.loop is not None
    asyncio.run_coroutine_threadsafe(runtime.audit.stop(), runtime.loop).result(15)
    rows = stack.sql("SELECT detail FROM audit.events WHERE actor = %s AND action = 'auth.granted' ORDER BY seq",
                     [str(owner.id)])
    assert [row[0] for row in rows] == [{"access": "thread.read", "live": "no"},
                                        {"access": "thread.read", "live": "no", "repeats": 2}]
    stacks.close()


def test_the_cache_can_be_turned_off(pg_module: PgCluster) -> None:
    for stack in build_stack(pg_module, gateway={"access_cache_ttl_s": 0}):
        owner = stack.user()
        thread = owner.thread(owner.house())
        assert read(owner, thread) == 200
        assert read(owner, thread) == 200
        assert cache_of(stack).stats() == {"listening": False, "principals": 0, "threads": 0, "api_keys": 0,
                                            "asked": 2 * 2}
