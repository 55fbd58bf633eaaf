"""A lean HTTP/1.1 load generator for throughput figures.

The benchmarks run their load generator on the same 2 cores as the servers they measure. httpx's async client
spends ~1.3-1.6 ms of CPU per request there - more than the streams server spends on an append - so a
throughput figure taken with it measures the client as much as the servers, and it takes from whichever
server needs the CPU most. This one keeps one connection per writer, sends each POST in one write and reads
the answer with a plain parser: a fraction of the CPU, the same requests on the wire. The benchmarks print
its CPU per request next to the servers', so the share it takes is visible, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvloop


class HttpError(RuntimeError):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; POSTs JSON and reads whole answers (Content-Length or none)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        # Headers and body go in one write, but answers must not wait for a delayed ACK either.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, parts.netloc)

    async def post(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{head}\r\n".encode() + payload
        )
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise HttpError(f"unexpected transfer-encoding {value.strip().decode()} (answer {status})")
        answer = await self.reader.readexactly(length) if length else b""
        return status, answer

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def post_throughput(base_url: str, path_for: Callable[[int], str], body_for: Callable[[int, int], Any],
                    headers: dict[str, str], writers: int, seconds: float, ok: tuple[int, ...] = (200, 201, 204),
                    ) -> tuple[float, int]:
    """`writers` concurrent writers, each on its own connection POSTing back to back for `seconds`:
    (requests per second, requests). Any answer not in `ok` stops the run with an error."""

    async def run() -> tuple[float, int]:
        connections = [await Connection.open(base_url) for _ in range(writers)]
        count = 0
        stop_at = time.perf_counter() + seconds

        async def writer(index: int) -> None:
            nonlocal count
            connection = connections[index]
            path = path_for(index)
            n = 0
            while time.perf_counter() < stop_at:
                status, answer = await connection.post(path, body_for(index, n), headers)
                if status not in ok:
                    raise HttpError(f"{status}: {answer[:200].decode(errors='replace')}")
                n += 1
                count += 1

        try:
            started = time.perf_counter()
            await asyncio.gather(*(writer(i) for i in range(writers)))
            elapsed = time.perf_counter() - started
        finally:
            for connection in connections:
                await connection.close()
        return count / elapsed, count

    return uvloop.run(run())
