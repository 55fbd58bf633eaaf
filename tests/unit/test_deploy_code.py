"""Rules every deploy follows, checked over the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

from appliance import roles
from appliance.config import host_config
from appliance.services import ServiceSpec, host_services
from appliance.supervision import Supervisor, Systemd

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
    conf = roles.render("postgres", "postgresql.conf.j2", tenant=tenant, archive_command="")
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "wal_level = logical" in conf and "archive_mode" not in conf
    assert "\n\n\n" not in conf


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


def test_every_tenant_service_runs_as_the_tenant_user_on_loopback() -> None:
    host = host_config("@local", {"tenants": {"acme": {"slot": 1}, "globex": {"slot": 2}}})
    for spec in host_services(host):
        if spec.tenant:
            assert spec.user == f"tenant-{spec.tenant}"
            assert spec.working_dir == host.tenant(spec.tenant).root
            assert "0.0.0.0" not in " ".join(spec.command)
