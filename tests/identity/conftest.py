"""The embedded OIDC provider for tests: a provisioned tenant on a throwaway cluster and the real Node server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.identity.provider import runtime_config
from tests.support.identity import LOGIN_LIMITS, Provider, start_provider
from tests.support.pg import PgCluster
from tests.support.ports import free_port
from tests.support.stack import make_tenant, provision, remove_base, stop_process, temp_base


@pytest.fixture(scope="module")
def idp(pg_module: PgCluster) -> Iterator[Provider]:
    base = temp_base("appliance-idp-")
    try:
        env = make_tenant(base, pg=pg_module, ports={"identity": free_port()})
        provision(env)
        config = runtime_config(env.tenant)
        config["login"] = dict(LOGIN_LIMITS)
        provider = start_provider(env, config)
        try:
            yield provider
        finally:
            stop_process(provider.process)
            print(provider.log_text()[-20000:])  # shown with -s or beside a failure
    finally:
        remove_base(base)
