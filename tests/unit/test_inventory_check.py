"""Bad inventories fail before anything touches a machine, with a message naming the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import main

REPO = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")

BAD_INVENTORIES = {
    "duplicate port": (
        '{"acme": {"slot": 1}, "globex": {"slot": 2, "ports": {"gateway": 20010}}}',
        "port 20010 is used by both tenant acme postgres and tenant globex gateway",
    ),
    "path characters in tenant id": ('{"../etc": {"slot": 1}}', "tenant id '../etc'"),
    "uppercase tenant id": ('{"Acme": {"slot": 1}}', "tenant id 'Acme'"),
    "tenant id too long": ('{"' + "a" * 30 + '": {"slot": 1}}', "2 to 24 characters"),
}


def _inventory(tmp_path: Path, tenants: str, extra: str = "") -> Path:
    # Every path the deploy could touch points into tmp_path, so "nothing touched" is checkable.
    common = (
        f'{{"install_root": "{tmp_path}/opt", "state_root": "{tmp_path}/srv", '
        f'"tenants_root": "{tmp_path}/srv/tenants", "config_dir": "{tmp_path}/etc"}}'
    )
    path = tmp_path / "inventory.py"
    path.write_text(f'local = [("@local", {{"tenants": {tenants}, "common": {common}{extra}}})]\n')
    return path


@pytest.mark.parametrize("case", sorted(BAD_INVENTORIES))
def test_inventory_check_names_the_problem(tmp_path: Path, case: str) -> None:
    tenants, message = BAD_INVENTORIES[case]
    result = CliRunner().invoke(main, ["inventory", "check", str(_inventory(tmp_path, tenants))])
    assert result.exit_code == 1
    assert message in result.output


def test_inventory_check_accepts_the_embedded_default() -> None:
    result = CliRunner().invoke(main, ["inventory", "check", str(REPO / "inventory" / "local.py")])
    assert result.exit_code == 0, result.output
    assert "acme (slot 1, user tenant-acme): postgres 20010" in result.output
    assert "inventory ok" in result.output


def test_inventory_check_accepts_the_onprem_example() -> None:
    result = CliRunner().invoke(main, ["inventory", "check", str(REPO / "inventory" / "onprem.example.py")])
    assert result.exit_code == 0, result.output


def test_missing_vault_host_is_named(tmp_path: Path) -> None:
    path = tmp_path / "inventory.py"
    path.write_text('hosts = [("tenant-a", {"objectstore_host": "vault", "tenants": {"acme": {"slot": 1}}})]\n')
    result = CliRunner().invoke(main, ["inventory", "check", str(path)])
    assert result.exit_code == 1
    assert "objectstore_host 'vault' is not a host of this inventory" in result.output


@pytest.mark.parametrize("case", ["duplicate port", "path characters in tenant id"])
def test_pyinfra_deploy_refuses_bad_inventory_before_touching_the_machine(tmp_path: Path, case: str) -> None:
    tenants, message = BAD_INVENTORIES[case]
    inventory = _inventory(tmp_path, tenants)
    result = subprocess.run(
        [PYINFRA, "-y", str(inventory), "deploy.py"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Beginning operation run" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inventory.py"]
