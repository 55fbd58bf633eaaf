"""Shared fixtures: real services on loopback, started and stopped by the tests that use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pg import PgCluster, pg_cluster


@pytest.fixture
def pg() -> Iterator[PgCluster]:
    """A fresh real Postgres cluster (wal_level=logical) for one test."""
    with pg_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pg_module() -> Iterator[PgCluster]:
    """A real Postgres cluster shared by one test module."""
    with pg_cluster() as cluster:
        yield cluster
