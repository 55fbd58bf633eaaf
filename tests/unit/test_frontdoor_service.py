"""The front door's service definition under both managers (issue 16): CAP_NET_BIND_SERVICE and nothing else,
as its own user; the same spec for systemd hosts (not run here: PID 1 is not systemd) and supervisord."""

from __future__ import annotations

import shlex

from appliance.config import host_config
from appliance.frontdoor.service import frontdoor_service, reload_command
from appliance.services import host_services
from appliance.supervision import Supervisor, Systemd, supervisor_command

HOST = host_config("box", {"tenants": {"acme": {"slot": 1}}})


def test_under_systemd_it_runs_as_its_user_with_only_the_bind_capability() -> None:
    unit = Systemd().render(frontdoor_service(HOST))
    assert "User=appliance-frontdoor" in unit
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    assert "NoNewPrivileges=yes" in unit
    assert "ExecStart=/usr/bin/caddy run --config /etc/appliance/frontdoor/Caddyfile --adapter caddyfile" in unit


def test_under_supervisord_setpriv_drops_to_its_user_keeping_only_the_bind_capability() -> None:
    command, user = supervisor_command(frontdoor_service(HOST))
    argv = shlex.split(command)
    assert user == "root" and argv[0] == "setpriv"  # supervisord cannot hand a capability to the user it runs
    assert "--reuid=appliance-frontdoor" in argv and "--regid=appliance-frontdoor" in argv
    assert "--ambient-caps=+net_bind_service" in argv and "--bounding-set=-all,+net_bind_service" in argv
    assert argv[argv.index("--") + 1:][:2] == ["/usr/bin/caddy", "run"]
    assert "setpriv" in Supervisor().render(frontdoor_service(HOST))


def test_other_services_keep_no_capability() -> None:
    for spec in host_services(HOST):
        if spec.component != "frontdoor":
            assert not spec.bind_privileged_ports
            assert "AmbientCapabilities" not in Systemd().render(spec)


def test_the_front_door_comes_after_the_gateways_and_only_where_tenants_are() -> None:
    components = [spec.component for spec in host_services(HOST)]
    assert components[-1] == "frontdoor" and components.index("gateway") < components.index("frontdoor")
    assert "frontdoor" not in [s.component for s in host_services(host_config("vault", {}))]


def test_reloads_go_through_the_admin_socket_not_a_port() -> None:
    command = reload_command(HOST)
    assert command[:3] == ["/usr/bin/caddy", "reload", "--force"]
    assert command[command.index("--address") + 1] == f"unix/{HOST.frontdoor_admin_socket}"


def test_systemd_restarts_a_running_unit_whose_definition_changed_and_starts_a_new_one() -> None:
    import subprocess

    spec = frontdoor_service(HOST)
    argv = Systemd().apply_command([spec])
    script = argv[2]
    assert argv[:2] == ["sh", "-c"] and "daemon-reload" in script
    # Run the script against a stand-in systemctl that records its calls: active -> restart, inactive -> start.
    for active, expected in ((True, "restart appliance-frontdoor.service"),
                             (False, "enable --now appliance-frontdoor.service")):
        answer = "true" if active else "false"
        stub = f'systemctl() {{ echo "$@" >> /dev/stderr; [ "$1" != is-active ] || {answer}; }}'
        result = subprocess.run(["sh", "-c", f"{stub}; {script}"], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        assert expected in result.stderr.splitlines(), result.stderr
