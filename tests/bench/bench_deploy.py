"""Deploy benchmark (issue 2): fresh tenant on a bootstrapped host, no-op redeploy, idle RSS per tenant.

Run as root on a machine where the embedded default is deployed (the first run deploys it):
    .venv/bin/python -m tests.bench.bench_deploy
Targets: fresh tenant < 30 s, no-op redeploy of both tenants < 5 s, idle RSS < 300 MB per tenant.
The baseline is pyinfra's own no-op over 3 operations, measured in the same run.
"""

from __future__ import annotations

import pwd
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.config import load_host_config
from tests.support.deployment import BIN, LOCAL_INVENTORY, REPO, changed_operations, deploy_or_fail

FRESH_TENANT = "benchfresh"


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pyinfra_baseline(tmp: Path) -> float:
    """pyinfra's own floor: a no-op run of 3 directory operations on @local."""
    deploy = tmp / "three_ops.py"
    deploy.write_text(
        "from pyinfra.operations import files\n"
        + "".join(f"files.directory(path='{tmp}/d{i}', mode='700')\n" for i in range(3))
    )
    run = [str(BIN / "pyinfra"), "-y", "@local", str(deploy)]
    subprocess.run(run, check=True, capture_output=True)
    return statistics.median(_timed(lambda: subprocess.run(run, check=True, capture_output=True)) for _ in range(3))


def rss_by_user() -> dict[str, int]:
    """Resident memory (bytes) summed over every process of each user."""
    totals: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            uid = proc.stat().st_uid
            rss_kb = next(
                int(line.split()[1]) for line in (proc / "status").read_text().splitlines() if line.startswith("VmRSS:")
            )
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            continue
        name = pwd.getpwuid(uid).pw_name
        totals[name] = totals.get(name, 0) + rss_kb * 1024
    return totals


def main() -> None:
    deploy_or_fail()  # the embedded default is in place and current before anything is measured
    host = load_host_config()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        baseline = pyinfra_baseline(tmp)

        noop_runs = []
        for _ in range(3):
            start = time.perf_counter()
            output = deploy_or_fail()
            noop_runs.append(time.perf_counter() - start)
            assert changed_operations(output) == 0, "redeploy was not a no-op"
        noop = statistics.median(noop_runs)

        inventory = tmp / "inventory.py"
        inventory.write_text(
            LOCAL_INVENTORY.read_text().replace(
                '"globex": {"slot": 2},', f'"globex": {{"slot": 2}}, "{FRESH_TENANT}": {{"slot": 9}},'
            )
        )
        subprocess.run(
            [str(BIN / "appliance"), "tenant", "destroy", FRESH_TENANT, "--yes-destroy-data"], capture_output=True
        )
        start = time.perf_counter()
        deploy_or_fail(inventory, "--data", f"only_tenants={FRESH_TENANT}")
        fresh = time.perf_counter() - start
        subprocess.run(
            [str(BIN / "appliance"), "tenant", "destroy", FRESH_TENANT, "--yes-destroy-data"],
            check=True,
            capture_output=True,
        )
        deploy_or_fail()  # back to the embedded default (host.json without the bench tenant)

    time.sleep(5)  # let start-up allocations settle
    rss = rss_by_user()
    print("deploy benchmark (issue 2)")
    print(f"  pyinfra no-op, 3 operations (baseline):     {baseline:6.2f} s")
    print(
        f"  no-op redeploy, 2 tenants (median of 3):    {noop:6.2f} s   ratio {noop / baseline:4.1f}x baseline"
        f"   target < 5 s: {'PASS' if noop < 5 else 'FAIL'}"
    )
    print(
        f"  fresh tenant on a bootstrapped host:        {fresh:6.2f} s   ratio {fresh / baseline:4.1f}x baseline"
        f"   target < 30 s: {'PASS' if fresh < 30 else 'FAIL'}"
    )
    for tenant in host.tenants:
        mb = rss.get(tenant.user, 0) / 2**20
        print(
            f"  idle RSS of tenant {tenant.id:<8} (all its processes): {mb:6.1f} MB"
            f"   target < 300 MB: {'PASS' if mb < 300 else 'FAIL'}"
        )
    if host.runs_objectstore:
        print(f"  idle RSS of the shared object store:      {rss.get(host.objectstore_user, 0) / 2**20:6.1f} MB")


if __name__ == "__main__":
    if not (REPO / "deploy.py").exists():
        raise SystemExit("run from the repository")
    main()
