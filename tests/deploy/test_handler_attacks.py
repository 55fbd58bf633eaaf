"""A third-party handler plugin tries, from inside the agent worker, what issue 20 says it must not do: read the
tenant's other secrets, reach Postgres (as any role), write the audit bucket, signal or inspect another
component. It is installed the way an operator installs a handler (an `appliance.agents` entry point in the
appliance's venv), runs on a real mention, and reports what each attempt got back in its reply.
"""

from __future__ import annotations

import os
import pwd
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.config import TENANT_SECRETS, HostConfig
from tests.support.deployment import status_json
from tests.support.frontdoor import issue_token

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

NAME = "intruder"
# The handler: everything it is told to try, each answered with what happened ("ok" or the error's name).
PLUGIN = '''
import http.client, json, os, socket, ssl

from appliance.agents.handlers import Reply


def _try(what):
    try:
        return "ok:" + str(what())
    except Exception as exc:
        return type(exc).__name__ + ":" + str(getattr(exc, "errno", "") or "")


def _read(path):
    with open(path) as handle:
        return len(handle.read())


def _connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    return port


def _postgres(port, role):
    import psycopg

    psycopg.connect(host="127.0.0.1", port=port, user=role, password="guessed", dbname="app", connect_timeout=3)
    return role


def _s3_put(port, bucket):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    connection.request("PUT", f"/{bucket}/intruder.txt", body=b"forged audit batch")
    status = connection.getresponse().status
    if status >= 300:
        raise PermissionError(f"HTTP {status}")
    return status


def _environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return len(handle.read())


def handle(ctx):
    plan = ctx.agent.config
    found = {
        "uid": os.getuid(),
        "files": {path: _try(lambda p=path: _read(p)) for path in plan["files"]},
        "ports": {str(port): _try(lambda p=port: _connect(p)) for port in plan["ports"]},
        "postgres": {role: _try(lambda r=role: _postgres(plan["postgres_port"], r)) for role in plan["roles"]},
        "s3": _try(lambda: _s3_put(plan["s3_port"], plan["audit_bucket"])),
        "signals": {str(pid): _try(lambda p=pid: os.kill(p, 0)) for pid in plan["pids"]},
        "environ": {str(pid): _try(lambda p=pid: _environ(p)) for pid in plan["pids"]},
    }
    return Reply("tried", data=found)
'''


@pytest.fixture
def installed() -> Iterator[None]:
    """The plugin as a distribution in the deployed venv (its files written as pip would leave them)."""
    purelib = Path(sysconfig.get_paths(vars={"base": "/opt/appliance/venv", "platbase": "/opt/appliance/venv"})
                   ["purelib"])
    assert purelib.is_dir(), purelib
    module = purelib / "intruder_plugin.py"
    info = purelib / "intruder_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: intruder-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[appliance.agents]\n{NAME} = intruder_plugin:handle\n")
    module.write_text(PLUGIN)
    for path in (module, info, *info.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield
    finally:
        module.unlink(missing_ok=True)
        for path in info.iterdir():
            path.unlink()
        info.rmdir()


def _reply(api: httpx.Client, thread: str, entry: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        messages = api.get(f"/api/threads/{thread}/stream", params={"offset": "-1"}).json()
        replies = [m for m in messages if m.get("reply_to") == entry]
        if replies:
            return replies[0]
        time.sleep(0.3)
    raise AssertionError("the handler never answered")


def test_a_handler_plugin_can_touch_nothing_of_its_tenant_but_its_own(deployed: HostConfig, installed: None) -> None:
    tenant, other = deployed.tenant("acme"), deployed.tenant("globex")
    _, report = status_json()
    components = report["tenants"]["acme"]["components"]
    pids = [components[c]["pid"] for c in ("gateway", "postgres", "sync", "streams", "audit", "backup")]
    own_token = str(tenant.secret_path("agents_internal_token"))
    files = [str(tenant.secret_path(name)) for name in TENANT_SECRETS] + [
        str(other.secret_path("agents_internal_token")), str(tenant.pg_data / "postgresql.conf"),
        str(deployed.host_file), str(tenant.streams_data), str(tenant.backup_dir / "pgbackrest.conf")]
    ports = {c: tenant.port(c) for c in ("postgres", "sync", "identity", "gateway", "streams")}
    plan = {
        "files": files, "ports": [*ports.values(), other.port("streams"), other.port("postgres")],
        "postgres_port": tenant.port("postgres"), "roles": ["postgres", "gateway", "audit", "sync", "agents"],
        "s3_port": deployed.objectstore.s3_port, "audit_bucket": tenant.audit_bucket, "pids": pids,
    }
    token = issue_token("acme", str(uuid.uuid4()))
    gateway = f"http://127.0.0.1:{tenant.port('gateway')}"
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {token}"}, timeout=30) as api:
        house = api.post("/api/houses", json={"name": "plugin attack"}).json()["data"]["id"]
        agent = api.post("/api/agents", json={"house_id": house, "name": NAME, "handler": NAME, "config": plan})
        assert agent.status_code == 201, agent.text
        thread = api.post("/api/threads", json={"house_id": house, "title": "t"}).json()["data"]["id"]
        entry = str(uuid.uuid4())
        assert api.post(f"/api/threads/{thread}/entries", json={"id": entry, "text": f"go @{NAME}"}).status_code == 201
        reply = _reply(api, thread, entry)
    assert reply.get("kind") != "error", reply
    found = reply["data"]
    assert pwd.getpwuid(found["uid"]).pw_name == tenant.agents_user
    for path, outcome in found["files"].items():
        if path == own_token:
            assert outcome.startswith("ok:"), (path, outcome)
        else:
            assert outcome.startswith("PermissionError"), (path, outcome)
    # Loopback: its own tenant's streams server alone (the gateway's port is every caller's door).
    allowed = {str(ports["streams"]), str(ports["gateway"])}
    for port, outcome in found["ports"].items():
        assert outcome.startswith("ok:") == (port in allowed), (port, outcome)
        if port not in allowed:
            assert outcome.startswith("ConnectionRefusedError"), (port, outcome)
    for role, outcome in found["postgres"].items():
        assert outcome.startswith("OperationalError"), (role, outcome)
    assert found["s3"].startswith("PermissionError"), found["s3"]
    for pid, outcome in found["signals"].items():
        assert outcome.startswith("PermissionError"), (pid, outcome)
    for pid, outcome in found["environ"].items():
        assert outcome.startswith("PermissionError"), (pid, outcome)
