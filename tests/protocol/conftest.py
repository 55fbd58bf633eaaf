"""Fixtures for protocol tests: one Postgres and one sync server per module, each test on its own tables."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.support.pg import PgCluster
from tests.support.sync import SyncServer, require_node_modules

_tables = itertools.count()


@pytest.fixture(scope="module")
def server(pg_module: PgCluster) -> Iterator[SyncServer]:
    require_node_modules()
    sync = SyncServer(pg_module.dsn, long_poll_ms=3000, allow_delete=True).start()
    try:
        yield sync
    finally:
        sync.stop()
        sync.remove()


@pytest.fixture
def table_name() -> str:
    return f"items_{next(_tables)}"
