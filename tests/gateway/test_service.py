"""The gateway's service spec: what the deploy renders and `appliance status` probes."""

from __future__ import annotations

from pathlib import Path

from appliance.gateway.core.config import Settings, gateway_url
from appliance.gateway.service import gateway_service
from tests.support.stack import make_tenant


def test_service_spec_runs_the_gateway_as_the_tenant_on_its_port(tmp_path: Path) -> None:
    env = make_tenant(tmp_path, tenant_id="acme", slot=1)
    spec = gateway_service(env.tenant)
    assert spec.name == "appliance-acme-gateway" and spec.component == "gateway"
    assert spec.command[-4:] == ("gateway", "serve", "--tenant", "acme")
    assert spec.command[0].endswith("/venv/bin/appliance")
    assert spec.user == "t-acme-gw" and spec.port == env.tenant.port("gateway")
    assert (spec.probe, spec.probe_path) == ("http", "/healthz")
    assert not any("secret" in value.lower() for value in (*spec.command, *spec.environment.values()))


def test_settings_derive_from_the_tenant(tmp_path: Path) -> None:
    env = make_tenant(tmp_path, tenant_id="acme", slot=1)
    settings = Settings.from_tenant(env.tenant)
    assert gateway_url(env.tenant) == f"http://127.0.0.1:{env.tenant.port('gateway')}"
    assert "password" not in settings.db_conninfo and settings.db_conninfo["user"] == "gateway"
