"""The activation contract seen from the gateway's side: what the worker's answers make the outbox do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agents import AgentStack, Member, agent_stack, replies_to, wait_for
from tests.support.pg import PgCluster

MAX_BODY = 8192  # the gateway's request limit here; the worker takes activations up to 16 times that


@pytest.fixture(scope="module")
def stack(pg_module: PgCluster) -> Iterator[AgentStack]:
    with agent_stack(pg_module, gateway={"max_body_bytes": MAX_BODY}) as built:
        yield built


def test_an_activation_too_large_for_the_worker_is_given_up_not_retried(stack: AgentStack, member: Member) -> None:
    """The house's configs travel in every activation; more than the worker takes is a permanent 413."""
    member.agent("echo", "echo")
    for i in range(20):
        created = member.http.post("/api/configs", json={"house_id": member.house, "key": f"blob{i}",
                                                         "value": "x" * (MAX_BODY - 1024)})
        assert created.status_code == 201, created.text
    thread = member.thread()
    posted = member.post(thread, "@echo are my configs too big?")
    rows = wait_for(lambda: [r for r in stack.sql(
        "SELECT state, last_error, attempts FROM appliance.outbox WHERE entry_id = %s", [posted["id"]])
        if r[0] == "gave_up"])
    assert rows == [("gave_up", "refused by the agent workers (413)", 1)]
    assert replies_to(member.read(thread), posted["id"]) == []
    assert stack.worker.healthy()
