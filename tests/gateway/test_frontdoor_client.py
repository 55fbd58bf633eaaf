"""FrontDoorClient: X-Forwarded-* count only on the front door's socket (issue 16)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.gateway.core.middleware import FRONT_DOOR_PEER, FrontDoorClient

SOCKET = "/srv/appliance/frontdoor/upstreams/acme/gateway.sock"


def seen_by_app(server: tuple[str, int | None], headers: list[tuple[bytes, bytes]],
                client: tuple[str, int] | None = ("127.0.0.1", 50000)) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(client=scope.get("client"), scheme=scope["scheme"])

    scope = {"type": "http", "server": server, "client": client, "scheme": "http", "headers": headers}
    asyncio.run(FrontDoorClient(app)(scope, None, None))  # type: ignore[arg-type]
    return seen


def test_the_front_doors_address_for_the_client_is_taken_on_its_socket() -> None:
    seen = seen_by_app((SOCKET, None), [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")],
                       client=FRONT_DOOR_PEER)
    assert seen == {"client": ("203.0.113.7", 0), "scheme": "https"}


def test_another_user_on_the_front_door_socket_is_not_believed() -> None:
    # The tenant's own processes can reach the socket; the protocol leaves their connections without a client.
    seen = seen_by_app((SOCKET, None), [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")],
                       client=None)
    assert seen == {"client": None, "scheme": "http"}


def test_the_last_address_is_the_one_the_front_door_saw() -> None:
    seen = seen_by_app((SOCKET, None), [(b"x-forwarded-for", b"10.9.9.9, 198.51.100.4")], client=FRONT_DOOR_PEER)
    assert seen["client"] == ("198.51.100.4", 0)


@pytest.mark.parametrize("server", [("127.0.0.1", 20013), ("::1", 20013)])
def test_forwarded_headers_sent_straight_to_the_gateway_port_are_ignored(server: tuple[str, int]) -> None:
    seen = seen_by_app(server, [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")])
    assert seen == {"client": ("127.0.0.1", 50000), "scheme": "http"}


@pytest.mark.parametrize("header", [b"", b"not-an-address", b"203.0.113.7:443", b"1.2.3.4\x00", b"x" * 5000])
def test_a_malformed_forwarded_address_leaves_the_client_unknown(header: bytes) -> None:
    seen = seen_by_app((SOCKET, None), [(b"x-forwarded-for", header), (b"x-forwarded-proto", b"gopher")],
                       client=FRONT_DOOR_PEER)
    assert seen == {"client": None, "scheme": "http"}
