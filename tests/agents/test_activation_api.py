"""`POST /activate/{agent_id}`: only the tenant's gateway (its internal bearer token, compared in constant time)
may activate; bad bodies are 4xx, never a 500 or a hang; no secret shows in answers, logs or the process list."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.agents.app import max_activation_bytes
from appliance.agents.service import agents_service
from appliance.agents.store import store_path
from appliance.services import tenant_services
from tests.support.agents import AgentStack, Member, activation_body, agents_tenant, wait_reply


@pytest.fixture
def echo_activation(member: Member) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid activation for a real echo agent and entry (the entry mentions nobody: only this test activates)."""
    agent = member.agent("echo", "echo")
    thread = member.thread()
    entry = member.post(thread, "no mention here")
    return agent, activation_body(agent, thread, entry, member.id)


def no_inbox(stack: AgentStack, agent: dict[str, Any]) -> bool:
    return not store_path(stack.tenant.agents_data, uuid.UUID(agent["id"])).exists()


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Basic {token}", "Bearer {token}x",
    "Bearer x{token}",
])
def test_activations_without_the_internal_token_are_refused(
        stack: AgentStack, echo_activation: tuple[dict[str, Any], dict[str, Any]], authorization: str | None) -> None:
    agent, body = echo_activation
    headers = {} if authorization is None else {"Authorization": authorization.format(token=stack.internal_token())}
    response = httpx.post(f"{stack.worker.url}/activate/{agent['id']}", json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert no_inbox(stack, agent)


def test_another_tenants_token_is_refused(stack: AgentStack, echo_activation: tuple[dict[str, Any], dict[str, Any]],
                                          tmp_path: Path) -> None:
    agent, body = echo_activation
    globex = agents_tenant(tmp_path, tenant_id="globex", slot=2)
    other_token = globex.tenant.read_secret("agents_internal_token")
    assert other_token != stack.internal_token()
    response = stack.activate(agent["id"], body, token=other_token)
    assert response.status_code == 401
    assert no_inbox(stack, agent)


def test_the_bearer_scheme_is_case_insensitive(stack: AgentStack,
                                                echo_activation: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, body = echo_activation
    response = httpx.post(f"{stack.worker.url}/activate/{agent['id']}", json=body,
                          headers={"Authorization": f"bearer {stack.internal_token()}"})
    assert response.status_code == 202


def test_the_right_token_is_accepted_and_a_repeat_is_a_duplicate(
        stack: AgentStack, member: Member, echo_activation: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, body = echo_activation
    first = stack.activate(agent["id"], body)
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    wait_reply(member, body["event"]["thread_id"], body["event"]["entry_id"])
    again = stack.activate(agent["id"], body)
    assert again.status_code == 200 and again.json() == {
        "status": "duplicate", "state": "done", "outcome": "replied", "reply_id": first.json()["reply_id"]}


def _broken(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = {**body, "agent": dict(body["agent"]), "event": dict(body["event"])}
    section, _, field = path.partition(".")
    target = broken[section] if field else broken
    key = field or section
    if value is _MISSING:
        del target[key]
    else:
        target[key] = value
    return broken


_MISSING = object()
# A well-formed house id that is not the activation's house (fixed: test ids must not change between runs).
_NOT_THE_HOUSE = "00000000-0000-4000-8000-0000000000f1"


@pytest.mark.parametrize(("path", "value"), [
    ("event", _MISSING), ("agent", _MISSING), ("event.entry_id", "not-a-uuid"), ("event.offset", "../../etc"),
    ("event.offset", "now"), ("event.type", "delete"), ("event.attempt", 0), ("event.thread_id", _MISSING),
    ("event.house_id", _NOT_THE_HOUSE), ("event.stream", "thread-../../x"), ("agent.name", "bad name!"),
    ("agent.handler", "../../evil"), ("agent.config", ["not", "an", "object"]), ("configs", "nope"),
])
def test_malformed_activations_are_422(stack: AgentStack, echo_activation: tuple[dict[str, Any], dict[str, Any]],
                                       path: str, value: Any) -> None:
    agent, body = echo_activation
    response = stack.activate(agent["id"], _broken(body, path, value))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert no_inbox(stack, agent)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b'"text"', b"\xff\xfe", b'{"agent": 1}'])
def test_bodies_that_are_not_activations_are_422(stack: AgentStack,
                                                 echo_activation: tuple[dict[str, Any], dict[str, Any]],
                                                 content: bytes) -> None:
    agent, _ = echo_activation
    response = httpx.post(f"{stack.worker.url}/activate/{agent['id']}", content=content,
                          headers={"Authorization": f"Bearer {stack.internal_token()}",
                                   "content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_wrong_content_type_path_or_agent_are_4xx(stack: AgentStack,
                                                  echo_activation: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, body = echo_activation
    auth = {"Authorization": f"Bearer {stack.internal_token()}"}
    as_text = httpx.post(f"{stack.worker.url}/activate/{agent['id']}", content=b"{}",
                         headers={**auth, "content-type": "text/plain"})
    assert as_text.status_code == 415
    assert stack.activate("not-a-uuid", body).status_code == 404
    assert stack.activate("..%2F..%2Fetc", body).status_code == 404
    other = stack.activate(str(uuid.uuid4()), body)
    assert other.status_code == 400 and other.json()["error"]["code"] == "bad_request"
    assert no_inbox(stack, agent)


def test_oversized_bodies_are_413(stack: AgentStack, echo_activation: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, body = echo_activation
    limit = max_activation_bytes(stack.tenant)
    huge = {**body, "configs": {"blob": "x" * (limit + 1)}}
    assert stack.activate(agent["id"], huge).status_code == 413

    def chunks() -> Any:
        yield b'{"configs": {"blob": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    streamed = httpx.post(f"{stack.worker.url}/activate/{agent['id']}", content=chunks(),
                          headers={"Authorization": f"Bearer {stack.internal_token()}",
                                   "content-type": "application/json"})
    assert streamed.status_code == 413
    assert no_inbox(stack, agent)
    assert stack.worker.healthy()


def test_health_answers_without_credentials(stack: AgentStack) -> None:
    response = httpx.get(f"{stack.worker.url}/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    ready = httpx.get(f"{stack.worker.url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"streams": True, "agents_dir": True}
    assert httpx.get(f"{stack.worker.url}/openapi.json").status_code == 404


def test_no_secret_in_answers_logs_or_the_process_list(stack: AgentStack, member: Member,
                                                       echo_activation: tuple[dict[str, Any], dict[str, Any]]) -> None:
    agent, body = echo_activation
    token = stack.internal_token()
    answers = [stack.activate(agent["id"], body, token="wrong").text, stack.activate(agent["id"], body).text,
               stack.activate(agent["id"], {"bad": token}).text]
    assert all(token not in answer for answer in answers)
    cmdline = Path(f"/proc/{stack.worker.pid}/cmdline").read_bytes().decode()
    environ = Path(f"/proc/{stack.worker.pid}/environ").read_bytes().decode(errors="replace")
    assert token not in cmdline and token not in environ
    log = stack.worker.log.read_text()
    assert token not in log and "Bearer" not in log


def test_the_worker_listens_on_loopback_only(stack: AgentStack) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss is not installed")
    port = stack.tenant.port("agents")
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert f"127.0.0.1:{port}" in listening
    assert not any(addr.endswith(f":{port}") and not addr.startswith("127.0.0.1:") for addr in listening
                   if ":" in addr)


def test_service_spec_runs_the_worker_as_its_own_user_on_its_port(stack: AgentStack) -> None:
    spec = agents_service(stack.tenant)
    assert spec.name == "appliance-acme-agents" and spec.component == "agents"
    assert spec.command[-4:] == ("agents", "serve", "--tenant", "acme")
    assert spec.command[0].endswith("/venv/bin/appliance")
    assert spec.user == "t-acme-agent" and spec.port == stack.tenant.port("agents")
    assert (spec.probe, spec.probe_path) == ("http", "/healthz")
    assert spec.working_dir == stack.tenant.agents_data and spec.log_file == stack.tenant.log_file("agents")
    assert not any("token" in value.lower() or "secret" in value.lower()
                   for value in (*spec.command, *spec.environment.values()))
    by_name = {spec.name: spec for spec in tenant_services(stack.tenant, "abc123")}
    assert by_name[spec.name].environment == {"APPLIANCE_CONFIG_DIR": str(stack.tenant.common.config_dir),
                                              "APPLIANCE_SOURCE_DIGEST": "abc123"}
