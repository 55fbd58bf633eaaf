"""Front door cost (issue 16), against the deployed embedded default, in one run on one machine.

Run as root on a machine where the embedded default is deployed (tenants acme and globex):
    .venv/bin/python -m tests.bench.bench_frontdoor [--n 300]

It deploys nothing and restarts nothing; all its traffic goes to 127.0.0.1. It measures, for tenant acme:

* added latency of the front door (https://acme.<domain> through Caddy, which proxies to the gateway's front-door
  socket) against the gateway straight (its plain HTTP port on loopback), keep-alive: each path uses one
  connection for all its requests (the TLS handshake is not in these figures; the number of connections each
  path used is printed to show it). Direct and front-door requests alternate (which goes first alternates too),
  so whatever else runs on the machine hits both alike. Two requests:
  - a shape GET at the tip: GET /api/shapes/houses at the offset and handle its first request gave, answered
    up-to-date at once (non-live);
  - a thread append: POST /api/threads/{id}/entries, 201.
  Both paths are driven by the same httpx client code, whose own CPU per request (about a millisecond on these
  2 shared cores, TLS adds some) is in every figure: the difference between the two paths is what the front
  door adds, not either absolute figure. Neither client sets TCP_NODELAY (door_client does not), so a POST's
  body may wait on Nagle on both paths alike.
* a fresh TLS handshake through the front door: TCP connect + TLS handshake to the listener with the tenant's
  name as SNI, verifying against the front door CA (socket + ssl, no HTTP); the baseline is a plain TCP connect
  to the gateway's port, in the same run (alternated).
* idle memory of the front door (the caddy process `appliance status --json` names): RSS (and PSS) after a few
  idle seconds, before this run's traffic and again after it.

The gateway limits each caller (a token bucket per principal, `gateway.rate_limit_per_minute`); a measurement
needs more requests than one bucket holds, so it uses several members, each with its own token, house and
thread, a member's bucket's worth of requests each (direct and front door always with the same member).

Targets (issue 16): added p50 < 1 ms (keep-alive, both requests); fresh TLS handshake p50 < 5 ms; idle RSS of
the front door < 60 MB with two tenants.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance.config import HostConfig, TenantConfig, load_host_config
from appliance.frontdoor.status import connect_address
from appliance.gateway.core.ratelimit import RateLimiter
from tests.bench.measure import percentile, tree_memory
from tests.support.deployment import status_json
from tests.support.frontdoor import DoorClient, door_client, issue_token

TENANT = "acme"
WARM = 20  # pairs of requests before the measured ones (connections opened, caches and code paths warm)
IDLE_S = 5.0  # how long the front door is left alone before its memory is read
RSS_TARGET_MB = 60
MB = 2**20

Client = httpx.Client | DoorClient


@dataclass
class Member:
    """A principal of its own (and so a rate-limit bucket of its own) with a house, a thread, and the tip of its
    houses shape."""

    auth: dict[str, str]
    thread: str
    handle: str
    tip: str


def new_member(direct: httpx.Client) -> Member:
    auth = {"Authorization": f"Bearer {issue_token(TENANT, str(uuid.uuid4()))}"}
    house = checked(direct.post("/api/houses", json={"name": "bench"}, headers=auth), 201).json()["data"]["id"]
    thread = checked(direct.post("/api/threads", json={"house_id": house, "title": "t"}, headers=auth),
                     201).json()["data"]["id"]
    response = checked(direct.get("/api/shapes/houses", params={"offset": "-1"}, headers=auth), 200)
    handle, tip = response.headers["electric-handle"], response.headers["electric-offset"]
    while "electric-up-to-date" not in response.headers:
        response = checked(direct.get("/api/shapes/houses", params={"offset": tip, "handle": handle}, headers=auth),
                           200)
        tip = response.headers["electric-offset"]
    return Member(auth, thread, handle, tip)


def checked(response: httpx.Response, expect: int) -> httpx.Response:
    if response.status_code != expect:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: expected {expect}, got "
                           f"{response.status_code}: {response.text[:300]}")
    return response


def members_for(direct: httpx.Client, requests: int, per_member: int) -> list[Member]:
    return [new_member(direct) for _ in range(math.ceil(requests / per_member))]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds of samples in seconds."""
    return percentile(samples, 50) * 1000, percentile(samples, 99) * 1000


def paired(n: int, direct: httpx.Client, door: DoorClient, members: list[Member], pairs_per_member: int,
           call: Callable[[Client, Member], httpx.Response], expect: int,
           check: Callable[[httpx.Response], None] | None = None) -> dict[str, Any]:
    """`WARM` + `n` pairs of the same request, direct and through the front door, alternating which goes first;
    the samples (seconds) of the last `n` pairs, and how many connections each path used."""
    samples: dict[str, list[float]] = {"direct": [], "front door": []}
    streams: dict[str, dict[int, object]] = {"direct": {}, "front door": {}}  # kept alive so ids stay unique
    paths: list[tuple[str, Client]] = [("direct", direct), ("front door", door)]
    for i in range(WARM + n):
        member = members[i // pairs_per_member]
        for name, client in paths if i % 2 == 0 else paths[::-1]:
            started = time.perf_counter()
            response = call(client, member)
            elapsed = time.perf_counter() - started
            checked(response, expect)
            if check is not None:
                check(response)
            stream = response.extensions.get("network_stream")
            streams[name][id(stream)] = stream
            if i >= WARM:
                samples[name].append(elapsed)
    return {"samples": samples, "connections": {name: len(seen) for name, seen in streams.items()}}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report_latency(name: str, measured: dict[str, Any]) -> dict[str, float]:
    d50, d99 = percentiles(measured["samples"]["direct"])
    f50, f99 = percentiles(measured["samples"]["front door"])
    added = f50 - d50
    connections = measured["connections"]
    print(f"{name:<32} direct p50 {d50:6.2f} ms p99 {d99:6.2f} | front door p50 {f50:6.2f} ms p99 {f99:6.2f} | "
          f"added p50 {added:5.2f} ms | ratio {f50 / d50:4.2f}x | "
          f"target added p50 < 1 ms: {verdict(added < 1)}")
    print(f"{'':<32} connections used: direct {connections['direct']}, front door {connections['front door']}")
    return {"direct_p50_ms": d50, "direct_p99_ms": d99, "frontdoor_p50_ms": f50, "frontdoor_p99_ms": f99,
            "added_p50_ms": added, "ratio_p50": f50 / d50}


def handshakes(host: HostConfig, tenant: TenantConfig, n: int) -> dict[str, Any]:
    """`n` fresh connections each: TCP + TLS to the front door (SNI the tenant's name, verified against the front
    door CA), and plain TCP to the gateway's port, alternated."""
    context = ssl.create_default_context(cafile=str(host.frontdoor_ca_cert))
    door_address = (connect_address(host), host.frontdoor.https_port)
    gateway_address = ("127.0.0.1", tenant.port("gateway"))
    hostname = tenant.hostnames[0]
    samples: dict[str, list[float]] = {"tcp": [], "tls": []}
    version = cipher = ""
    for i in range(WARM + n):
        started = time.perf_counter()
        with socket.create_connection(gateway_address, timeout=10):
            elapsed = time.perf_counter() - started
        if i >= WARM:
            samples["tcp"].append(elapsed)
        started = time.perf_counter()
        with socket.create_connection(door_address, timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=hostname) as tls:
            elapsed = time.perf_counter() - started
            version, cipher = str(tls.version()), (tls.cipher() or ("?",))[0]
        if i >= WARM:
            samples["tls"].append(elapsed)
    t50, t99 = percentiles(samples["tcp"])
    h50, h99 = percentiles(samples["tls"])
    print(f"{'fresh connection':<32} TCP to gateway p50 {t50:6.2f} ms p99 {t99:6.2f} | front door TCP + TLS p50 "
          f"{h50:6.2f} ms p99 {h99:6.2f} | ratio {h50 / t50:5.1f}x | target p50 < 5 ms: {verdict(h50 < 5)}")
    print(f"{'':<32} {version}, {cipher}, SNI {hostname}, verified against {host.frontdoor_ca_cert}")
    return {"tcp_connect_p50_ms": t50, "tcp_connect_p99_ms": t99, "tls_handshake_p50_ms": h50,
            "tls_handshake_p99_ms": h99, "ratio_p50": h50 / t50, "tls_version": version, "cipher": cipher}


def frontdoor_pid() -> int:
    code, status = status_json()
    frontdoor = status["host"]["components"].get("frontdoor", {})
    if not frontdoor.get("pid"):
        raise SystemExit(f"`appliance status --json` (exit {code}) names no front door process: {frontdoor}")
    return int(frontdoor["pid"])


def idle_memory(pid: int, when: str) -> dict[str, float]:
    time.sleep(IDLE_S)
    proc = Path("/proc") / str(pid)
    if not proc.exists() or proc.joinpath("comm").read_text().strip() != "caddy":
        raise SystemExit(f"the front door (pid {pid}) is gone: was the host redeployed during the run?")
    rss, pss = (value / MB for value in tree_memory(pid))
    label = f"front door idle memory, {when}"
    print(f"{label:<32} RSS {rss:6.1f} MB (PSS {pss:6.1f} MB) after {IDLE_S:.0f} s idle, pid {pid}, "
          f"2 tenants | target RSS < {RSS_TARGET_MB} MB: {verdict(rss < RSS_TARGET_MB)}")
    return {"rss_mb": rss, "pss_mb": pss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="samples per figure")
    args = parser.parse_args()

    host = load_host_config()
    tenant = host.tenant(TENANT)
    hostname = tenant.hostnames[0]
    gateway_url = f"http://127.0.0.1:{tenant.port('gateway')}"
    # A member's bucket holds `capacity` requests; its setup takes up to 5 of them, and a few more are spare.
    per_member = int(RateLimiter(tenant.gateway.rate_limit_per_minute).capacity) - 10
    pairs_per_member = per_member // 2
    if pairs_per_member < 1:
        raise SystemExit(f"gateway.rate_limit_per_minute {tenant.gateway.rate_limit_per_minute} is too low to bench")
    results: dict[str, Any] = {}

    pid = frontdoor_pid()
    print(f"front door https://{hostname}:{host.frontdoor.https_port} (caddy pid {pid}) vs gateway {gateway_url}, "
          f"{args.n} samples per figure after {WARM} warm-up, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs\n")
    results["idle_memory_before"] = idle_memory(pid, "before")

    with httpx.Client(base_url=gateway_url, timeout=30) as direct, door_client(host, hostname) as door:
        members = members_for(direct, 2 * (WARM + args.n), 2 * pairs_per_member)

        def tip(client: Client, member: Member) -> httpx.Response:
            return client.get("/api/shapes/houses", params={"offset": member.tip, "handle": member.handle},
                              headers=member.auth)

        def up_to_date(response: httpx.Response) -> None:
            if "electric-up-to-date" not in response.headers:
                raise RuntimeError(f"shape GET at the tip was not up-to-date: {response.text[:300]}")

        measured = paired(args.n, direct, door, members, pairs_per_member, tip, 200, up_to_date)
        results["shape_tip"] = report_latency("shape GET at tip (up-to-date)", measured)

        members = members_for(direct, 2 * (WARM + args.n), 2 * pairs_per_member)

        def append(client: Client, member: Member) -> httpx.Response:
            return client.post(f"/api/threads/{member.thread}/entries", json={"id": str(uuid.uuid4()), "text": "bench"},
                               headers=member.auth)

        measured = paired(args.n, direct, door, members, pairs_per_member, append, 201)
        results["append"] = report_latency("thread append (201)", measured)

    results["handshake"] = handshakes(host, tenant, args.n)
    results["idle_memory_after"] = idle_memory(pid, "after")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
