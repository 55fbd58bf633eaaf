"""Driving real deploys of the embedded default to this machine from tests and benchmarks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.paths import REPO

BIN = Path(sys.executable).parent
LOCAL_INVENTORY = REPO / "inventory" / "local.py"


def pyinfra_deploy(
    inventory: Path = LOCAL_INVENTORY, *extra: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pyinfra"), "-y", str(inventory), "deploy.py", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def deploy_or_fail(inventory: Path = LOCAL_INVENTORY, *extra: str) -> str:
    result = pyinfra_deploy(inventory, *extra)
    output = result.stdout + result.stderr  # pyinfra prints its progress and results table on stderr
    if result.returncode != 0:
        raise AssertionError(f"deploy failed ({result.returncode}):\n{output[-8000:]}")
    return output


def changed_operations(output: str) -> int:
    """The 'Success' count of pyinfra's results table: operations that changed something."""
    match = re.search(r"Grand total\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if not match:
        raise AssertionError(f"no results table in pyinfra output:\n{output[-3000:]}")
    return 0 if match.group(1) == "-" else int(match.group(1))


def changed_operation_names(output: str) -> list[str]:
    names = []
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 5 and cells[2].isdigit():
            names.append(cells[0])
    return names


def status_json() -> tuple[int, dict[str, Any]]:
    result = subprocess.run([str(BIN / "appliance"), "status", "--json"], capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout)


def pids(report: dict[str, Any]) -> dict[str, int | None]:
    found = {f"host/{name}": c.get("pid") for name, c in report["host"]["components"].items()}
    for tenant, data in report["tenants"].items():
        found.update({f"{tenant}/{name}": c.get("pid") for name, c in data["components"].items()})
    return found


ANSIBLE_RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_playbook(inventory: Path, *extra: str, repo: Path = REPO,
                     timeout: float = 1800) -> tuple[int, str, dict[str, int]]:
    """`ansible-playbook -i <inventory> site.yml` from `repo` (a snapshot's package, when given one): (exit code,
    output, changed tasks per host)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(repo / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    if repo != REPO:
        env["PYTHONPATH"] = str(repo)
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml", *extra], cwd=repo,
                            env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    changed = {m[1]: int(m[2]) for m in ANSIBLE_RECAP.finditer(output)}
    return result.returncode, output, changed


def ansible_inventory(path: Path, hosts: dict[str, dict[str, Any]]) -> Path:
    """An Ansible YAML inventory of `hosts` (name -> variables, appliance settings and connection alike)."""
    import yaml

    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path
