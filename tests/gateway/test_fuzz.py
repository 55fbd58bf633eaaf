"""Fuzz every operation of /openapi.json with schemathesis (bounded examples): the gateway never answers 5xx.

Requests carry a valid token of a principal who owns a house (so generated requests get past authentication
and reach the routes' own validation, checks and SQL); the sync engine is a recording stand-in on the tenant's
sync port, so shape requests get an answer too; the tenant's own identity provider runs, so logins do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.identity.provider import runtime_config
from appliance.tenantdb.schema import SYNCED_TABLES
from tests.gateway.conftest import Stack
from tests.gateway.test_shape_proxy import electric
from tests.support.identity import start_provider
from tests.support.stack import recording_server, stop_process

MAX_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def fuzz_target(stack: Stack) -> Iterator[tuple[Stack, dict[str, str], dict[str, str]]]:
    owner = stack.user()
    house = owner.house("fuzzed")
    known = {"house_id": house, "thread_id": owner.thread(house)}
    token = owner.http.headers["Authorization"]
    provider = start_provider(stack.env, runtime_config(stack.env.tenant))
    try:
        with recording_server(electric, port=stack.env.tenant.port("sync")):
            yield stack, {"Authorization": token}, known
    finally:
        stop_process(provider.process)


def bind(case: Any, known: dict[str, str], table: str) -> None:
    """Point a generated request at objects that exist, so it reaches the route's deeper paths."""
    for name, value in known.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
        if isinstance(case.body, dict) and name in case.body:
            case.body[name] = value
    if case.path_parameters and "table" in case.path_parameters:
        case.path_parameters["table"] = table


def operations(stack: Stack) -> list[Any]:
    schema = schemathesis.openapi.from_url(stack.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_openapi_operations_never_answer_5xx(fuzz_target: tuple[Stack, dict[str, str], dict[str, str]]) -> None:
    stack, headers, known = fuzz_target
    found = operations(stack)
    assert len(found) >= 25
    failures: list[str] = []
    for operation in found:
        strategy = operation.as_strategy()

        @given(case=strategy, authenticated=st.booleans(), bound=st.booleans(),
               table=st.sampled_from(sorted(SYNCED_TABLES)))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any, authenticated: bool, bound: bool, table: str) -> None:
            if bound:
                bind(case, known, table)
            response = case.call(base_url=stack.url, headers=headers if authenticated else {}, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                f"{response.text[:300]}")
            elif response.status_code >= 400:
                body = response.json()
                assert set(body["error"]) == {"code", "message"}, body

        run()
    assert not failures, "\n".join(failures[:20])
