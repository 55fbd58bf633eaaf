"""The same stack with `ansible-playbook` (issue 19): the playbook is well formed; on a host pyinfra deployed it
changes and restarts nothing; a tenant added through Ansible comes up healthy, isolated like any other, and then
neither a second Ansible run nor pyinfra with the same inventory changes anything.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance.config import HostConfig, load_host_config
from tests.support import isolation
from tests.support.deployment import (
    BIN,
    LOCAL_INVENTORY,
    ansible_playbook,
    changed_operations,
    deploy_or_fail,
    pids,
    status_json,
)
from tests.support.paths import REPO

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

LOCAL_YAML = REPO / "inventory" / "local.yml"
def ansible(inventory: Path, *extra: str) -> tuple[int, str, int]:
    """`ansible-playbook -i <inventory> site.yml` as an operator runs it: (exit code, output, tasks changed)."""
    code, output, changed = ansible_playbook(inventory, *extra)
    return code, output, sum(changed.values()) if changed else -1


def changed_tasks(output: str) -> list[str]:
    """The tasks a run reported changed (for a failure message that says which)."""
    names, current = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed:"):
            names.append(current)
    return names


def test_the_playbook_and_both_inventories_are_well_formed() -> None:
    for inventory in (LOCAL_YAML, REPO / "inventory" / "onprem.example.yml"):
        code, output, _ = ansible(inventory, "--syntax-check")
        assert code == 0, output[-3000:]


def test_ansible_on_a_host_pyinfra_deployed_changes_and_restarts_nothing(deployed: HostConfig) -> None:
    _, before = status_json()
    code, output, changed = ansible(LOCAL_YAML, "--check")
    assert code == 0 and changed == 0, changed_tasks(output) or output[-3000:]
    code, output, changed = ansible(LOCAL_YAML)
    assert code == 0, output[-5000:]
    assert changed == 0, changed_tasks(output)
    _, after = status_json()
    assert pids(after) == pids(before)


def test_a_bad_inventory_is_refused_before_the_host_is_touched(tmp_path: Path) -> None:
    inventory = tmp_path / "bad.yml"
    inventory.write_text(LOCAL_YAML.read_text().replace("globex: {slot: 2}", "globex: {slot: 1}"))
    code, output, _ = ansible(inventory)
    assert code != 0
    assert "tenants acme and globex both have slot 1" in output
    assert "Install system packages" not in output


def test_a_tenant_added_through_ansible_is_healthy_isolated_and_left_alone_by_pyinfra(
        deployed: HostConfig, tmp_path: Path) -> None:
    # A fresh id per run: a destroyed tenant's audit trail stays locked (1 day here) and blocks its id.
    tenant_id = f"ansible{os.getpid()}"
    yaml_inventory = tmp_path / "inventory.yml"
    yaml_inventory.write_text(LOCAL_YAML.read_text().replace(
        "        globex: {slot: 2}\n",
        f"        globex: {{slot: 2}}\n        {tenant_id}: {{slot: 7, audit: {{retention_days: 1}}}}\n"))
    assert tenant_id in yaml_inventory.read_text()
    py_inventory = tmp_path / "inventory.py"
    py_inventory.write_text(LOCAL_INVENTORY.read_text().replace(
        '"globex": {"slot": 2},',
        f'"globex": {{"slot": 2}}, "{tenant_id}": {{"slot": 7, "audit": {{"retention_days": 1}}}},'))
    assert tenant_id in py_inventory.read_text()
    destroy = [str(BIN / "appliance"), "tenant", "destroy", tenant_id, "--yes-destroy-data", "--skip-audit-ship"]
    _, before = status_json()
    try:
        code, output, _ = ansible(yaml_inventory, "-e", f"only_tenants={tenant_id}")
        assert code == 0, output[-6000:]
        code, report = status_json()
        assert code == 0, report
        assert all(c["healthy"] for c in report["tenants"][tenant_id]["components"].values()), report
        # Adding it touched neither acme nor globex.
        assert {k: v for k, v in pids(report).items() if not k.startswith(f"{tenant_id}/")} == pids(before)

        host = load_host_config()
        added, acme = host.tenant(tenant_id), host.tenant("acme")
        isolation.isolated(host, added, acme)
        isolation.isolated(host, acme, added)

        # A second Ansible run, and pyinfra with the same inventory, leave it alone.
        code, output, changed = ansible(yaml_inventory)
        assert code == 0 and changed == 0, changed_tasks(output) or output[-3000:]
        assert changed_operations(deploy_or_fail(py_inventory)) == 0
        _, after = status_json()
        assert pids(after) == pids(report)
    finally:
        subprocess.run(destroy, capture_output=True)
        deploy_or_fail()
