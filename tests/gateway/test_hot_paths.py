"""The hot paths (appliance/gateway/api/hot.py): the well-formed shape GET, thread read and entry append are
answered before FastAPI's router, and everything else still reaches the routes, which answer as they always did
(errors, and their order: authentication before a bad parameter, a body that is not JSON before both)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway.conftest import Stack, User


@pytest.fixture
def routed(stack: Stack) -> Iterator[list[str]]:
    """Paths of the requests that reached FastAPI's router, from now until the test ends."""
    seen: list[str] = []
    app = stack.gateway.app
    layer: Any = app.middleware_stack
    while getattr(layer, "app", None) is not app.router:
        layer = layer.app
    router = layer.app

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await router(scope, receive, send)

    layer.app = counting
    try:
        yield seen
    finally:
        layer.app = router


def entry(text: str = "hello") -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "text": text}


def test_well_formed_hot_requests_skip_the_router(stack: Stack, member: tuple[User, str, str],
                                                  routed: list[str]) -> None:
    user, _, thread = member
    assert user.post(f"/api/threads/{thread}/entries", entry()).status_code == 201
    read = user.get(f"/api/threads/{thread}/stream", params={"offset": "-1", "other": "ignored"})
    assert read.status_code == 200 and [m["text"] for m in read.json()] == ["hello"]
    assert user.get(f"/api/threads/{thread.upper()}/stream", params={"offset": "-1"}).status_code == 200
    # This stack has no sync engine: the hot path's answer is the proxy's 503.
    shape = user.get("/api/shapes/threads", params={"offset": "-1"})
    assert shape.status_code == 503 and shape.json()["error"]["code"] == "upstream_unavailable"
    assert routed == []
    assert user.get("/healthz").status_code == 200
    assert routed == ["/healthz"]


def test_what_is_not_plainly_well_formed_is_the_routes(stack: Stack, member: tuple[User, str, str],
                                                      routed: list[str]) -> None:
    user, _, thread = member
    # A thread id in another form pydantic accepts: the route serves it.
    assert user.get(f"/api/threads/{uuid.UUID(thread).hex}/stream", params={"offset": "-1"}).status_code == 200
    bad = user.get(f"/api/threads/{thread}/stream", params={"offset": "-1\n"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert "offset" in bad.json()["error"]["message"]
    assert user.get(f"/api/threads/{thread}/stream", params=[("offset", "-1"), ("offset", "now")]).status_code \
        in (200, 204)
    assert user.get("/api/threads/not-a-thread/stream").status_code == 422
    assert user.get("/api/shapes/nope").json()["error"]["code"] == "unknown_table"
    unknown = user.post(f"/api/threads/{thread}/entries", {**entry(), "extra": 1})
    assert unknown.status_code == 422 and "extra" in unknown.json()["error"]["message"]
    not_json = user.http.post(f"/api/threads/{thread}/entries", content=b"{",
                              headers={"content-type": "application/json"})
    assert not_json.status_code == 422
    assert len(routed) == 7


def test_errors_keep_their_order(stack: Stack, member: tuple[User, str, str]) -> None:
    _, _, thread = member
    anonymous = stack.anonymous()
    # Authentication first, whether the entry is valid or not; a body that is not JSON before that.
    assert anonymous.post(f"/api/threads/{thread}/entries", json=entry()).status_code == 401
    assert anonymous.post(f"/api/threads/{thread}/entries", json={"text": 1}).status_code == 401
    assert anonymous.post(f"/api/threads/{thread}/entries", content=b"{",
                          headers={"content-type": "application/json"}).status_code == 422
    assert anonymous.get(f"/api/threads/{thread}/stream", params={"offset": "bad"}).status_code == 401
    assert anonymous.get(f"/api/threads/{thread}/stream").status_code == 401
    assert anonymous.get("/api/shapes/threads").status_code == 401
    # Not a member: not found, from the hot path as from the route.
    stranger = stack.user()
    for response in (stranger.get(f"/api/threads/{thread}/stream"),
                     stranger.post(f"/api/threads/{thread}/entries", entry()),
                     stranger.get(f"/api/threads/{uuid.UUID(thread).hex}/stream")):
        assert response.status_code == 404 and response.json() == {"error": {"code": "not_found",
                                                                           "message": "not found"}}
