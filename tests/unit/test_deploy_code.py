"""Rules every deploy follows, checked over the code itself."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from appliance import services
from appliance.config import host_config
from appliance.desired import postgres_files
from appliance.roles import role_file
from appliance.services import host_services
from appliance.servicespec import ServiceSpec
from appliance.supervision import Supervisor, Systemd, supervisor_environment

DEPLOYS = Path(__file__).resolve().parents[2] / "appliance" / "deploys"
FILE_OPS = {"put", "template", "directory", "file"}


def test_every_file_operation_sets_an_explicit_mode() -> None:
    missing = []
    for module in DEPLOYS.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func = node.func
            target = func.value.value if isinstance(func.value, ast.Attribute) and func.attr == "_inner" else func.value
            name = func.value.attr if func.attr == "_inner" and isinstance(func.value, ast.Attribute) else func.attr
            is_file_op = isinstance(target, ast.Name) and target.id == "files" and name in FILE_OPS
            if is_file_op and not any(kw.arg == "mode" for kw in node.keywords):
                missing.append(f"{module.name}:{node.lineno} files.{name}")
    assert not missing


def test_templates_render_without_blank_lines_left_by_block_tags() -> None:
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}}})
    tenant = host.tenant("acme")
    conf = postgres_files(tenant)["postgresql.conf"]
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "wal_level = logical" in conf
    assert f"archive_command = '{tenant.backup_dir}/pgbackrest.sh archive-push %p'" in conf
    assert "\n\n\n" not in conf


def test_only_the_official_image_runtime_opens_the_cluster_to_the_docker_bridge() -> None:
    host = host_config("@local", {"tenants": {"acme": {"slot": 1, "sync": {"runtime": "electric"}}}})
    files = postgres_files(host.tenant("acme"), "172.17.0.1")
    assert "listen_addresses = '127.0.0.1,172.17.0.1'" in files["postgresql.conf"]
    assert "host    all          sync       172.17.0.1/16" in files["pg_hba.conf"]
    embedded = postgres_files(host_config("@local", {"tenants": {"acme": {"slot": 1}}}).tenant("acme"))
    assert "172.17" not in embedded["postgresql.conf"] + embedded["pg_hba.conf"]


def _spec() -> ServiceSpec:
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}}})
    return next(s for s in host_services(host) if s.component == "postgres")


def test_supervisor_and_systemd_render_the_same_spec() -> None:
    spec = _spec()
    program = Supervisor().render(spec)
    unit = Systemd().render(spec)
    for text in (program, unit):
        assert "/srv/appliance/tenants/acme/postgres/data" in text
        assert "tenant-acme" in text
    assert "[program:appliance-acme-postgres]" in program and "stopsignal=INT" in program
    assert "user=tenant-acme" in program and "umask=077" in program
    assert "ExecStart=" in unit and "KillSignal=SIGINT" in unit and "User=tenant-acme" in unit


def test_every_tenant_service_runs_as_its_components_user_on_loopback() -> None:
    """Each component under a user of its own (the agent workers in their own dir); Postgres and the backup, the
    cluster's owner, under the tenant's user."""
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}, "globex": {"slot": 2}}})
    own = {"agents": "agent", "gateway": "gw", "sync": "sync", "streams": "strm", "identity": "idp", "audit": "audit"}
    for spec in host_services(host):
        if spec.tenant:
            tenant = host.tenant(spec.tenant)
            agents = spec.component == "agents"
            suffix = own.get(spec.component)
            assert spec.user == (f"t-{spec.tenant}-{suffix}" if suffix else f"tenant-{spec.tenant}")
            assert spec.working_dir == (tenant.agents_data if agents else tenant.root)
            assert spec.umask == ("007" if spec.component in ("agents", "streams") else "077")
            assert "0.0.0.0" not in " ".join(spec.command)


def test_a_new_streams_server_changes_the_streams_programs_and_nothing_else(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    """The streams server is not the appliance's code (no source digest in its program): its own files' digest
    is, so a deploy that installs a new server.mjs or lock restarts the tenants' streams servers."""
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}, "globex": {"slot": 2}}})
    before = {s.name: Supervisor().render(s) for s in host_services(host)}
    files = tmp_path / "streams" / "files"
    files.mkdir(parents=True)
    for name in services.STREAMS_SERVER_FILES:
        (files / name).write_bytes(role_file("streams", name).read_bytes())
    (files / "server.mjs").write_bytes((files / "server.mjs").read_bytes() + b"\n// a new release\n")
    monkeypatch.setattr(services, "role_file", lambda role, name: tmp_path / role / "files" / name)
    services.streams_server_digest.cache_clear()
    try:
        after = {s.name: Supervisor().render(s) for s in host_services(host)}
    finally:
        services.streams_server_digest.cache_clear()
    assert {name for name in before if before[name] != after[name]} == {"appliance-acme-streams",
                                                                        "appliance-globex-streams"}


def test_a_supervised_program_gets_its_users_home_not_supervisords() -> None:
    """supervisord keeps its own (root's) HOME when it switches user; each program sets its own, and a spec's
    own value wins (the front door's Caddy state)."""
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}}})
    gateway = next(s for s in host_services(host) if s.component == "gateway")
    program = Supervisor().render(gateway)
    assert 'environment=HOME="/srv/appliance/tenants/acme",USER="t-acme-gw",LOGNAME="t-acme-gw",' in program
    assert program.count("HOME=") == 1
    assert supervisor_environment(replace(gateway, environment={"HOME": "/elsewhere"}))["HOME"] == "/elsewhere"
