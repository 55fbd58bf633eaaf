"""The front door's settings and the Caddyfile they render to (issue 16): names, routing, guards."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ConfigError, HostConfig, host_config
from appliance.frontdoor.caddyfile import (
    CHUNKED_BODY_MARGIN_BYTES,
    UPSTREAM_KEEPALIVE_S,
    edge_read_timeout_s,
    render_caddyfile,
)
from appliance.frontdoor.tls import DEFAULT_NAME


def host(**data: Any) -> HostConfig:
    data.setdefault("tenants", {"acme": {"slot": 1}, "globex": {"slot": 2}})
    return host_config("box", data)


def test_a_tenant_is_reached_at_its_own_name_under_the_domain_by_default() -> None:
    config = host()
    assert config.tenant("acme").hostnames == ("acme.appliance.internal",)
    assert config.tenant("acme").url == "https://acme.appliance.internal"
    custom = host(common={"domain": "corp.example"}, frontdoor={"https_port": 8443},
                  tenants={"acme": {"slot": 1, "frontdoor": {"hostnames": ["acme.example.com", "app.acme.io"]}}})
    assert custom.tenant("acme").hostnames == ("acme.example.com", "app.acme.io")
    assert custom.tenant("acme").url == "https://acme.example.com:8443"


@pytest.mark.parametrize("address", ["10.0.0.5", "0.0.0.0", "192.168.1.2", "::", "example.com"])
def test_internal_components_cannot_be_bound_beyond_loopback(address: str) -> None:
    with pytest.raises(ConfigError, match=r"common settings: bind_address.*front door"):
        host(common={"bind_address": address})


def test_loopback_addresses_are_accepted_for_internal_components() -> None:
    for address in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert host(common={"bind_address": address}).common.bind_address == address


@pytest.mark.parametrize(("tenant_frontdoor", "message"), [
    ({"bind_address": "0.0.0.0"}, "settings of the host's front door"),
    ({"https_port": 444}, "settings of the host's front door"),
    ({"hostnames": ["Acme.example.com"]}, "not a DNS name"),
    ({"hostnames": ["acme"]}, "not a DNS name"),
    ({"hostnames": ["a.example.com", "a.example.com"]}, "listed twice"),
    ({"tls": "files"}, "needs cert_file"),
    ({"tls": "files", "cert_file": "relative.pem", "key_file": "/k"}, "needs cert_file"),
    ({"tls": "selfsigned"}, "tls"),
])
def test_bad_tenant_front_door_settings_are_refused(tenant_frontdoor: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        host(tenants={"acme": {"slot": 1, "frontdoor": tenant_frontdoor}})


def test_two_tenants_cannot_share_a_hostname() -> None:
    shared = {"frontdoor": {"hostnames": ["app.example.com"]}}
    with pytest.raises(ConfigError, match=r"app\.example\.com is given to both acme and globex"):
        host(tenants={"acme": {"slot": 1, **shared}, "globex": {"slot": 2, **shared}})


def test_the_front_door_ports_cannot_collide_with_a_tenant_port() -> None:
    acme_gateway = host().tenant("acme").port("gateway")
    with pytest.raises(ConfigError, match="frontdoor https"):
        host(frontdoor={"https_port": acme_gateway})


@pytest.mark.parametrize("origin", ["*", "https://app.example.com/", "https://app.example.com/path", "app.example.com",
                                    "ftp://app.example.com", "https://App.example.com", "https://a.example.com:99999x"])
def test_cors_origins_must_be_plain_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match="not an origin"):
        host(tenants={"acme": {"slot": 1, "gateway": {"cors_origins": [origin]}}})


def test_cors_origins_are_per_tenant() -> None:
    config = host(tenants={"acme": {"slot": 1, "gateway": {"cors_origins": ["https://app.acme.io"]}},
                           "globex": {"slot": 2}})
    assert config.tenant("acme").gateway.cors_origins == ("https://app.acme.io",)
    assert config.tenant("globex").gateway.cors_origins == ()


def test_a_host_without_tenants_runs_no_front_door() -> None:
    assert not host(tenants={}).runs_frontdoor
    assert not host(frontdoor={"enabled": False}).runs_frontdoor
    assert host().runs_frontdoor


def test_each_tenant_view_names_that_tenant_alone() -> None:
    config = host()
    view = config.tenant_view("acme")
    assert [t.id for t in view.tenants] == ["acme"]
    assert "globex" not in view.model_dump_json()


def _sites(caddyfile: str) -> dict[str, str]:
    """Site address line -> its block."""
    blocks: dict[str, str] = {}
    lines = caddyfile.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("https://", "http://")) and line.endswith("{"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j] == "}")
            blocks[line[:-1].strip()] = "\n".join(lines[i:end])
    return blocks


def test_each_tenants_names_route_to_its_own_gateway_socket_only() -> None:
    config = host(frontdoor={"bind_address": "127.0.0.1"},
                  tenants={"acme": {"slot": 1, "frontdoor": {"hostnames": ["acme.example.com", "www.acme.io"]}},
                           "globex": {"slot": 2}})
    sites = _sites(render_caddyfile(config))
    acme = sites["https://acme.example.com:443, https://www.acme.io:443"]
    globex = sites["https://globex.appliance.internal:443"]
    assert f"reverse_proxy unix/{config.tenant('acme').gateway_socket}" in acme
    assert str(config.tenant("globex").gateway_socket) not in acme
    assert f"reverse_proxy unix/{config.tenant('globex').gateway_socket}" in globex
    for block in sites.values():
        assert "bind 127.0.0.1" in block
    # Unknown names: an answer that names no tenant, with a certificate naming none.
    unknown = sites["https://:443"]
    assert "acme" not in unknown and "globex" not in unknown and "reverse_proxy" not in unknown
    assert f"default_sni {DEFAULT_NAME}" in render_caddyfile(config)
    assert "reverse_proxy" not in sites["http://:80"]
    assert "redir https://{host}{uri} 308" in sites["http://globex.appliance.internal:80"]


def test_edge_limits_match_the_gateway() -> None:
    config = host(tenants={"acme": {"slot": 1, "gateway": {"max_body_bytes": 4096},
                                    "sync": {"long_poll_timeout_ms": 45000}}})
    block = _sites(render_caddyfile(config))["https://acme.appliance.internal:443"]
    # Declared too large: refused at the edge; chunked: the gateway refuses first, the edge's cap is above it.
    assert "int({http.request.header.Content-Length}) > 4096" in block
    assert f"max_size {4096 + CHUNKED_BODY_MARGIN_BYTES}" in block
    assert f"keepalive {UPSTREAM_KEEPALIVE_S}s" in block and UPSTREAM_KEEPALIVE_S < 5  # uvicorn's default
    assert edge_read_timeout_s(config.tenant("acme")) > 45
    assert f"response_header_timeout {edge_read_timeout_s(config.tenant('acme'))}s" in block
    # Caddy 2.6 ends proxied answers at a reload when flush_interval is -1; it flushes SSE on its own.
    assert not [line for line in block.splitlines() if line.strip().startswith("flush_interval")]
    assert "grace_period" in render_caddyfile(config)
    assert "protocols tls1.2 tls1.3" in block
    assert 'Strict-Transport-Security "max-age=31536000"' in block
    assert "Strict-Transport-Security" not in render_caddyfile(host(frontdoor={"hsts_max_age_s": 0}))


def test_the_rendered_caddyfile_is_one_caddy_accepts(tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    assert caddy, "caddy is not installed (.ci/run installs Debian's caddy)"
    config = host(frontdoor={"https_port": 8443, "http_port": 8080, "acme_email": "ops@example.com"},
                  tenants={"acme": {"slot": 1}, "globex": {"slot": 2, "frontdoor": {"tls": "acme"}}})
    path = tmp_path / "Caddyfile"
    path.write_text(render_caddyfile(config))
    result = subprocess.run([caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "redir https://{host}:8443{uri}" in path.read_text()
