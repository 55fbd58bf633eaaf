"""Fixtures for audit tests: one real TLS object store per module, a fresh tenant (and cluster) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.audit import AuditRig, audit_rig
from tests.support.objectstore import ObjectStore, object_store


@pytest.fixture(scope="module")
def store() -> Iterator[ObjectStore]:
    with object_store([]) as running:
        yield running


@pytest.fixture
def rig(store: ObjectStore) -> Iterator[AuditRig]:
    with audit_rig(store) as fresh:
        yield fresh
