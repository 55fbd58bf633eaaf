"""The official Electric image's container spec (no Docker engine runs here; the spec is what is tested)."""

from __future__ import annotations

from typing import Any

import pytest
from docker.errors import NotFound

from appliance.config import SyncRuntime, host_config
from appliance.sync.container import (
    STORAGE_IN_CONTAINER,
    container_spec,
    docker_engine_answers,
    ensure_container,
    resolve_runtime,
)


def _tenant():  # type: ignore[no-untyped-def]
    return host_config("@local", {"tenants": {"acme": {"slot": 1, "sync": {"long_poll_timeout_ms": 15000}}}}).tenant(
        "acme"
    )


def _spec() -> dict[str, Any]:
    return container_spec(_tenant(), sync_password="p@ss/word", secret="s3cret", uid=1001, gid=1002)


def test_port_is_published_on_loopback_only() -> None:
    spec = _spec()
    assert spec["ports"] == {"3000/tcp": ("127.0.0.1", _tenant().port("sync"))}


def test_environment_carries_the_database_url_secret_and_settings() -> None:
    env = _spec()["environment"]
    assert env["DATABASE_URL"] == (
        f"postgresql://sync:p%40ss%2Fword@host.docker.internal:{_tenant().port('postgres')}/app?sslmode=disable"
    )
    assert env["ELECTRIC_SECRET"] == "s3cret"
    assert env["ELECTRIC_LONG_POLL_TIMEOUT"] == "15000"
    assert env["ELECTRIC_STORAGE_DIR"] == STORAGE_IN_CONTAINER
    assert env["ELECTRIC_USAGE_REPORTING"] == "false"


def test_storage_lives_in_the_tenant_dir_and_runs_as_the_tenant_user() -> None:
    spec = _spec()
    tenant = _tenant()
    (host_path,) = spec["volumes"]
    assert host_path.startswith(str(tenant.sync_data))
    assert spec["volumes"][host_path]["bind"] == STORAGE_IN_CONTAINER
    assert spec["user"] == "1001:1002"
    assert spec["image"] == tenant.sync.electric_image
    assert spec["cap_drop"] == ["ALL"] and spec["read_only"]


def test_spec_digest_changes_with_any_setting() -> None:
    first = _spec()["labels"]["appliance.spec-sha256"]
    assert first == _spec()["labels"]["appliance.spec-sha256"]
    other = container_spec(_tenant(), sync_password="other", secret="s3cret", uid=1001, gid=1002)
    assert other["labels"]["appliance.spec-sha256"] != first


@pytest.mark.parametrize(
    ("setting", "engine", "expected"),
    [
        (SyncRuntime.auto, True, SyncRuntime.electric),
        (SyncRuntime.auto, False, SyncRuntime.embedded),
        (SyncRuntime.embedded, True, SyncRuntime.embedded),
        (SyncRuntime.electric, False, SyncRuntime.electric),
    ],
)
def test_runtime_resolution(setting: SyncRuntime, engine: bool, expected: SyncRuntime) -> None:
    assert resolve_runtime(setting, engine) is expected


def test_no_engine_answers_on_this_machine() -> None:
    # The docker client is installed here but no engine runs: auto must pick the embedded engine.
    assert docker_engine_answers(timeout_s=1) is False


class _Container:
    def __init__(self, labels: dict[str, str], status: str) -> None:
        self.labels, self.status, self.calls = labels, status, []  # type: ignore[var-annotated]

    def remove(self, force: bool) -> None:
        self.calls.append("remove")

    def start(self) -> None:
        self.calls.append("start")


class _Containers:
    def __init__(self, existing: _Container | None) -> None:
        self.existing, self.runs = existing, []  # type: ignore[var-annotated]

    def get(self, name: str) -> _Container:
        if self.existing is None:
            raise NotFound("no such container")
        return self.existing

    def run(self, **kwargs: Any) -> None:
        self.runs.append(kwargs)


class _Client:
    def __init__(self, existing: _Container | None) -> None:
        self.containers = _Containers(existing)


def test_ensure_creates_replaces_starts_or_leaves_alone() -> None:
    spec = _spec()
    digest = spec["labels"]["appliance.spec-sha256"]
    absent = _Client(None)
    assert ensure_container(absent, spec) == ["container appliance-acme-sync created"]
    assert absent.containers.runs == [spec]

    stale = _Client(_Container({"appliance.spec-sha256": "old"}, "running"))
    assert "replaced" in ensure_container(stale, spec)[0]
    assert stale.containers.existing.calls == ["remove"] and stale.containers.runs == [spec]

    stopped = _Client(_Container({"appliance.spec-sha256": digest}, "exited"))
    assert "started" in ensure_container(stopped, spec)[0]

    current = _Client(_Container({"appliance.spec-sha256": digest}, "running"))
    assert ensure_container(current, spec) == []
    assert current.containers.runs == [] and current.containers.existing.calls == []
