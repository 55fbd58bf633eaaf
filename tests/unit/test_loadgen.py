"""The benchmarks' load generator (tests/bench/loadgen.py): it must count only whole, accepted answers, keep each
connection usable across answers with and without bodies, and stop on an answer it was not told to accept."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tests.bench.loadgen import HttpError, post_throughput


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the servers under test answer
    received: ClassVar[list[tuple[str, dict[str, object], str | None]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append((self.path, body, self.headers.get("authorization")))
        if self.path.startswith("/fail"):
            self._answer(500, b'{"error":"boom"}')
        elif self.path.startswith("/empty"):
            self._answer(204, b"")
        else:
            self._answer(201, json.dumps({"echo": body}).encode())

    def _answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("prefix", ["/body", "/empty"])
def test_every_request_is_sent_whole_and_counted_once(server: str, prefix: str) -> None:
    rate, count = post_throughput(server, lambda i: f"{prefix}/{i}", lambda i, n: {"writer": i, "n": n},
                                  {"Authorization": "Bearer t"}, writers=3, seconds=0.3)
    received = _Handler.received
    assert count == len(received) > 3 and rate > 0
    for writer in range(3):
        sent = [body["n"] for path, body, _ in received if path == f"{prefix}/{writer}"]
        assert sent == list(range(len(sent))) and sent  # in order on one connection, none lost or repeated
    assert {auth for _, _, auth in received} == {"Bearer t"}


def test_an_unaccepted_answer_stops_the_run(server: str) -> None:
    with pytest.raises(HttpError, match="500"):
        post_throughput(server, lambda i: "/fail", lambda i, n: {}, {}, writers=2, seconds=5)
    with pytest.raises(HttpError, match="201"):
        post_throughput(server, lambda i: "/body", lambda i, n: {}, {}, writers=1, seconds=5, ok=(204,))
