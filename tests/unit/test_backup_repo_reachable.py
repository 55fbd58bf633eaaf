"""A backup repository whose store is down is reported at once, not after pgBackRest's minutes of retries."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from appliance.backup import pgbackrest
from appliance.backup.errors import BackupError
from appliance.config import HostConfig, host_config


def _host(tmp_path: Path) -> HostConfig:
    return host_config("@local", {"common": {"tenants_root": str(tmp_path)}, "tenants": {"acme": {"slot": 1}}})


def test_the_address_read_back_is_the_one_the_config_was_rendered_with(tmp_path: Path) -> None:
    host = _host(tmp_path)
    text = pgbackrest.render_config(host, host.tenant("acme"))
    assert pgbackrest.address_in(text) == pgbackrest.repo_endpoint(host)


def test_info_answers_within_seconds_when_the_store_refuses_connections(tmp_path: Path) -> None:
    host = _host(tmp_path)
    tenant = host.tenant("acme")
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        config = pgbackrest.render_config(host, tenant).replace(
            f"repo1-storage-port={pgbackrest.repo_endpoint(host)[1]}", f"repo1-storage-port={port}")
        path = pgbackrest.backup_paths(tenant).config
        path.parent.mkdir(parents=True)
        path.write_text(config)
        started = time.monotonic()
        with pytest.raises(BackupError, match=f"acme's backups at localhost:{port} is unreachable"):
            pgbackrest.info(tenant)
    assert time.monotonic() - started < pgbackrest.REPO_CONNECT_TIMEOUT_S + 1


def test_a_tenant_without_a_rendered_config_is_not_probed(tmp_path: Path) -> None:
    assert pgbackrest.repo_address(_host(tmp_path).tenant("acme")) is None
