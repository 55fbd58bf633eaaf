"""The shape proxy against a recording upstream on the tenant's sync port: what the gateway injects, what it
refuses, and that answers (status, headers, body; long-poll and SSE) stream through unbuffered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from appliance.tenantdb.schema import SYNCED_TABLES
from tests.gateway.conftest import Stack
from tests.support.stack import Recorded, RecordingServer, recording_server, send_json

ELECTRIC_HEADERS = {
    "electric-handle": "12345-1700000000000000",
    "electric-offset": "0_0",
    "electric-schema": '{"id":{"type":"uuid","pk_index":0}}',
    "cache-control": "public, max-age=60, stale-while-revalidate=300",
    "etag": '"12345-1700000000000000:-1:0_0"',
    "access-control-allow-origin": "*",
}


def _chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def electric(server: RecordingServer, record: Recorded, handler: BaseHTTPRequestHandler) -> None:
    """Enough of the Electric shape API for a proxy to be tested against."""
    query = dict(record.query)
    if record.headers.get("if-none-match"):
        handler.send_response(304)
        handler.send_header("etag", record.headers["if-none-match"])
        handler.send_header("content-length", "0")
        handler.end_headers()
        return
    if query.get("handle") == "gone":
        send_json(handler, 409, [{"headers": {"control": "must-refetch"}}],
                  {"electric-handle": "new-handle", "cache-control": "public, max-age=60"})
        return
    if query.get("offset") == "bad":
        send_json(handler, 400, {"message": "Invalid request", "errors": {"offset": ["has invalid format"]}})
        return
    if query.get("live_sse") == "true":
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("transfer-encoding", "chunked")
        handler.send_header("electric-handle", "12345-1700000000000000")
        handler.end_headers()
        _chunk(handler, b'data: {"headers":{"control":"up-to-date"}}\n\n')
        server.event("next").wait(10)
        _chunk(handler, b'data: {"key":"x","value":{"id":"1"},"headers":{"operation":"insert"}}\n\n')
        _chunk(handler, b"")
        return
    if query.get("live") == "true":
        server.event("change").wait(10)
        send_json(handler, 200, [{"headers": {"control": "up-to-date"}}],
                  {**ELECTRIC_HEADERS, "electric-cursor": "42", "cache-control": "public, max-age=5"})
        return
    send_json(handler, 200, [{"headers": {"control": "snapshot-end"}}, {"headers": {"control": "up-to-date"}}],
              {**ELECTRIC_HEADERS, "electric-up-to-date": ""})


@pytest.fixture
def upstream(stack: Stack) -> Iterator[RecordingServer]:
    with recording_server(electric, port=stack.env.tenant.port("sync")) as server:
        yield server


def shapes(server: RecordingServer) -> list[dict[str, Any]]:
    return [{"query": r.query, "headers": r.headers} for r in server.requests if r.path == "/v1/shape"]


def test_the_gateway_sets_table_columns_where_and_secret(stack: Stack, upstream: RecordingServer) -> None:
    alice = stack.user()
    houses = sorted([alice.house(), alice.house()])
    response = alice.get("/api/shapes/threads", params={"offset": "-1", "foo": "bar", "cache-buster": "7"})
    assert response.status_code == 200, response.text
    [sent] = shapes(upstream)
    assert sent["query"] == [
        ("table", "threads"), ("columns", ",".join(SYNCED_TABLES["threads"])),
        ("where", "house_id IN ($1, $2) AND deleted_at IS NULL"),
        ("params[1]", houses[0]), ("params[2]", houses[1]),
        ("secret", stack.env.tenant.read_secret("sync_secret")),
        ("offset", "-1"), ("cache-buster", "7"),
    ]
    assert "authorization" not in sent["headers"]


def test_subset_parameters_and_post_bodies_reach_the_engine_under_the_gateways_shape(
    stack: Stack, upstream: RecordingServer
) -> None:
    alice = stack.user()
    house = alice.house()
    subset = {"subset__where": "title = $1", "subset__params": '{"1": "x"}', "subset__order_by": "title",
              "subset__limit": "10", "subset__offset": "2", "subset__where_expr": "{}"}
    assert alice.get("/api/shapes/threads", params={"offset": "-1", **subset}).status_code == 200
    body = b'{"where": "true", "table": "secrets", "subset": {"where": "true"}}'
    posted = alice.http.post("/api/shapes/threads", params={"offset": "-1"}, content=body,
                             headers={"content-type": "application/json"})
    assert posted.status_code == 200
    get, post = [r for r in upstream.requests if r.path == "/v1/shape"]
    query = dict(get.query)
    assert {k: query[k] for k in subset if k in query} == {k: v for k, v in subset.items() if k != "subset__where_expr"}
    assert (query["table"], query["where"]) == ("threads", "house_id IN ($1) AND deleted_at IS NULL")
    assert (post.method, post.body) == ("POST", body)
    # The engine reads the shape from the query string only: the gateway's, whatever the body says.
    assert dict(post.query)["table"] == "threads" and dict(post.query)["params[1]"] == house


def test_no_houses_means_a_shape_no_row_matches(stack: Stack, upstream: RecordingServer) -> None:
    loner = stack.user()
    assert loner.get("/api/shapes/houses", params={"offset": "-1"}).status_code == 200
    query = dict(shapes(upstream)[0]["query"])
    assert query["where"] == "house_id IS NULL" and "params[1]" not in query


def test_membership_changes_make_a_new_shape(stack: Stack, upstream: RecordingServer) -> None:
    owner, guest = stack.user(), stack.user()
    house = owner.house()
    guest.get("/api/shapes/members", params={"offset": "-1"})
    added = owner.post("/api/members", {"house_id": house, "principal_id": str(guest.id)}).json()["data"]
    guest.get("/api/shapes/members", params={"offset": "-1"})
    owner.delete(f"/api/members/{added['id']}")
    guest.get("/api/shapes/members", params={"offset": "-1"})
    wheres = [dict(s["query"]).get("params[1]") for s in shapes(upstream)]
    assert wheres == [None, house, None]


@pytest.mark.parametrize("param", ["where", "WHERE", "table", "columns", "secret", "api_secret", "params[1]",
                                   "params", "replica"])
def test_client_shape_definitions_are_refused(stack: Stack, upstream: RecordingServer, param: str) -> None:
    alice = stack.user()
    alice.house()
    response = alice.get("/api/shapes/houses", params={"offset": "-1", param: "1=1"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "param_not_allowed"
    assert shapes(upstream) == []


@pytest.mark.parametrize("table", ["secrets", "api_keys", "invites", "audit_events", "..%2Fhouses", "houses;drop",
                                   "pg_authid", "HOUSES"])
def test_only_synced_tables_are_shapes(stack: Stack, upstream: RecordingServer, table: str) -> None:
    response = stack.user().get(f"/api/shapes/{table}", params={"offset": "-1"})
    assert response.status_code == 404
    assert shapes(upstream) == []


def test_unauthenticated_shape_requests_never_reach_the_engine(stack: Stack, upstream: RecordingServer) -> None:
    assert stack.anonymous().get("/api/shapes/houses", params={"offset": "-1"}).status_code == 401
    assert shapes(upstream) == []


def test_status_headers_and_body_pass_through(stack: Stack, upstream: RecordingServer) -> None:
    alice = stack.user()
    alice.house()
    response = alice.get("/api/shapes/houses", params={"offset": "-1"})
    assert response.json()[1] == {"headers": {"control": "up-to-date"}}
    for name in ("electric-handle", "electric-offset", "electric-schema", "etag"):
        assert response.headers[name] == ELECTRIC_HEADERS[name], name
    assert response.headers["cache-control"] == "private, max-age=60, stale-while-revalidate=300"
    assert "electric-up-to-date" in response.headers
    assert "access-control-allow-origin" not in response.headers
    assert "Authorization" in response.headers["vary"]
    must_refetch = alice.get("/api/shapes/houses", params={"offset": "0_0", "handle": "gone"})
    assert must_refetch.status_code == 409 and must_refetch.headers["electric-handle"] == "new-handle"
    assert must_refetch.json() == [{"headers": {"control": "must-refetch"}}]
    bad = alice.get("/api/shapes/houses", params={"offset": "bad"})
    assert bad.status_code == 400 and "errors" in bad.json()
    cached = alice.get("/api/shapes/houses", params={"offset": "-1"}, headers={"if-none-match": '"abc"'})
    assert cached.status_code == 304 and cached.headers["etag"] == '"abc"'


def test_no_shape_answer_may_be_kept_by_a_shared_cache(stack: Stack, upstream: RecordingServer) -> None:
    # Electric marks shape answers public; behind the gateway each is one caller's rows (issue 16).
    alice = stack.user()
    alice.house()
    initial = alice.get("/api/shapes/houses", params={"offset": "-1"})
    refetch = alice.get("/api/shapes/houses", params={"offset": "0_0", "handle": "gone"})
    upstream.event("change").set()
    live = alice.get("/api/shapes/houses", params={"offset": "0_0", "handle": "h", "live": "true"})
    for response in (initial, refetch, live):
        directives = [d.strip() for d in response.headers["cache-control"].split(",")]
        assert directives[0] == "private" and "public" not in directives, response.headers["cache-control"]
        assert not any(d.startswith("s-maxage") for d in directives)
        assert "Authorization" in response.headers["vary"]


def test_long_poll_waits_for_the_upstream(stack: Stack, upstream: RecordingServer) -> None:
    alice = stack.user()
    alice.house()
    timer = threading.Timer(1.5, upstream.event("change").set)
    timer.start()
    started = time.monotonic()
    response = alice.get("/api/shapes/houses", params={"offset": "0_0", "handle": "h", "live": "true"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["electric-cursor"] == "42"
    assert 1.4 < elapsed < 5


def test_sse_is_streamed_unbuffered(stack: Stack, upstream: RecordingServer) -> None:
    """The upstream sends its second event only after the client has the first: a buffering proxy deadlocks."""
    alice = stack.user()
    alice.house()
    events: list[dict[str, Any]] = []
    with alice.http.stream("GET", "/api/shapes/houses",
                           params={"offset": "0_0", "handle": "h", "live": "true", "live_sse": "true"},
                           timeout=httpx.Timeout(8.0)) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                upstream.event("next").set()
    assert [e["headers"].get("control") or e["headers"].get("operation") for e in events] == ["up-to-date", "insert"]


def test_an_unreachable_engine_is_a_503(stack: Stack) -> None:
    alice = stack.user()
    response = alice.get("/api/shapes/houses", params={"offset": "-1"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "upstream_unavailable"


def test_shape_grants_are_audited(stack: Stack, upstream: RecordingServer) -> None:
    alice = stack.user()
    house = alice.house()
    alice.get("/api/shapes/agents", params={"offset": "-1"})
    stack.flush_audit()
    rows = stack.sql("SELECT detail FROM audit.events WHERE actor = %s AND action = 'auth.granted'", [str(alice.id)])
    assert rows == [({"access": "shape.read", "houses": [house]},)]
