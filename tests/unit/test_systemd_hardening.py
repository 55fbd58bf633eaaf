"""The systemd units generated for real hosts (this machine's PID 1 is not systemd, so they are checked, not run):
every service confined to what it writes, without capabilities, devices or uncommon system calls, and limited in
memory by its component's setting. `systemd-analyze verify` reads each unit as systemd would."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from appliance.config import host_config
from appliance.services import host_services
from appliance.supervision import Supervisor, Systemd

HARDENING = ("ProtectSystem=strict", "PrivateDevices=yes", "SystemCallFilter=@system-service", "NoNewPrivileges=yes",
             "ProtectKernelTunables=yes", "ProtectControlGroups=yes", "RestrictSUIDSGID=yes")


def _host():  # type: ignore[no-untyped-def]
    return host_config("@local", {"tenants": {"acme": {"slot": 1, "gateway": {"memory_max": "768M"}},
                                              "globex": {"slot": 2}}})


def _directives(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]


def test_every_unit_is_confined_to_what_it_writes_and_limited_in_memory() -> None:
    host = _host()
    specs = host_services(host)
    assert {s.component for s in specs} >= {"postgres", "gateway", "agents", "frontdoor", "objectstore"}
    for spec in specs:
        unit = Systemd().render(spec)
        for line in HARDENING:
            assert line in unit.splitlines(), f"{spec.name} lacks {line}"
        writable = _directives(unit, "ReadWritePaths")[0].split()
        bounding = _directives(unit, "CapabilityBoundingSet")
        if spec.tenant:
            tenant = host.tenant(spec.tenant)
            # The gateway and the provider each write their own front-door socket dir, nothing else outside.
            own = {"gateway": tenant.gateway_socket.parent, "identity": tenant.identity_socket.parent}
            extra = [str(own[spec.component])] if spec.component in own and tenant.frontdoor.enabled else []
            assert writable == [str(tenant.root), *extra]
            assert _directives(unit, "MemoryMax") == [getattr(tenant, spec.component).memory_max]
        else:
            assert all(not w.startswith(str(host.common.tenants_root)) for w in writable)
        # No capability at all, but the front door's one to bind 443 and 80.
        assert bounding == (["CAP_NET_BIND_SERVICE"] if spec.component == "frontdoor" else [""])
    gateway = next(s for s in specs if s.name == "appliance-acme-gateway")
    assert "MemoryMax=768M" in Systemd().render(gateway)
    # supervisord has no such confinement or limit: its program files say nothing of it.
    assert "MemoryMax" not in Supervisor().render(gateway)


def test_systemd_reads_every_unit_without_an_unknown_or_invalid_directive(tmp_path: Path) -> None:
    units = []
    for spec in host_services(_host()):
        path = tmp_path / spec.unit_name
        path.write_text(Systemd().render(spec))
        units.append(str(path))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True)
    output = result.stdout + result.stderr
    # Binaries and users that exist only on a deployed host may be reported; a directive systemd does not know
    # or cannot parse may not.
    problems = [line for line in output.splitlines()
                if re.search(r"Unknown key|Unknown section|Invalid|Failed to parse|ignoring", line)]
    assert not problems, output


def test_a_memory_limit_that_systemd_would_not_read_is_refused_by_the_inventory_check() -> None:
    import pytest

    from appliance.config import ConfigError

    for bad in ("lots", "0", "1.5G", "-1M", "512MB"):
        with pytest.raises(ConfigError, match="memory_max"):
            host_config("@local", {"tenants": {"acme": {"slot": 1, "sync": {"memory_max": bad}}}})


def test_services_start_store_first_and_stop_it_last_under_either_manager() -> None:
    """Stopping in reverse start order lets each Postgres archive its last WAL to a store still up (with one
    priority for all, supervisord stopped the store first and each Postgres hung on pgBackRest until killed)."""
    specs = {spec.name: spec for spec in host_services(_host())}
    order = {name: int(_directives(Supervisor().render(spec), "priority")[0]) for name, spec in specs.items()}
    store, postgres = order["appliance-objectstore"], order["appliance-acme-postgres"]
    assert store < postgres < order["appliance-acme-sync"] < order["appliance-acme-gateway"]
    assert postgres < order["appliance-acme-audit"] and postgres < order["appliance-acme-backup"]
    assert order["appliance-frontdoor"] == max(order.values())
    after = {name: _directives(Systemd().render(spec), "After")[0].split() for name, spec in specs.items()}
    assert "appliance-objectstore.service" in after["appliance-acme-postgres"]
    assert "appliance-acme-postgres.service" in after["appliance-acme-gateway"]
    assert "appliance-acme-postgres.service" in after["appliance-acme-backup"]
    # Only within its tenant: another tenant's units never hold one back.
    assert not any("globex" in unit for unit in after["appliance-acme-gateway"])
