"""Fixtures for agent worker tests: one real stack per module (see tests/support/agents.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agents import AgentStack, Member, agent_stack
from tests.support.pg import PgCluster


@pytest.fixture(scope="module")
def stack(pg_module: PgCluster) -> Iterator[AgentStack]:
    with agent_stack(pg_module) as built:
        yield built


@pytest.fixture
def member(stack: AgentStack) -> Iterator[Member]:
    user = stack.member()
    try:
        yield user
    finally:
        user.http.close()
