"""The deploy tells a running supervisord from one shutting down (it still holds its socket) and from none."""

from __future__ import annotations

import pytest

from appliance.deploys.facts import Supervisord

SHUTTING_DOWN = ("error: <class 'xmlrpc.client.Fault'>, <Fault 6: 'SHUTDOWN_STATE'>: file: "
                 "/usr/lib/python3.11/xmlrpc/client.py line: 668")


@pytest.mark.parametrize(("output", "state"), [
    (["12754"], "running"),
    ([SHUTTING_DOWN], "stopping"),
    (["unix:///var/run/supervisor.sock no such file"], "absent"),
    (["unix:///var/run/supervisor.sock refused connection"], "absent"),
    ([], "absent"),
])
def test_supervisord_state_is_read_from_supervisorctl(output: list[str], state: str) -> None:
    assert Supervisord().process(output) == state
