"""The embedded default deployed to @local, once per session, for every test here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.config import HostConfig, load_host_config
from tests.support.deployment import deploy_or_fail


@pytest.fixture(scope="session")
def deployed() -> Iterator[HostConfig]:
    deploy_or_fail()
    yield load_host_config()
