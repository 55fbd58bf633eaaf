"""Upgrade in place (issue 20): a tenant deployed by the previous landed commit, where every component but the agent
workers ran as the tenant's one user and its one S3 identity served the audit shipper and the backup, is redeployed
by this tree to a user per component and an S3 identity each for the audit shipper and the backup (the old identity
gone from the store), with its data, streams and audit trail intact, and the next deploy changes nothing.

The previous commit's sources come from git (`git archive`), and its deploy runs from them (PYTHONPATH), as an
operator's checkout of that release would. Only a tenant of this test's own is deployed by it (`only_tenants`).
"""

from __future__ import annotations

import io
import json
import os
import pwd
import subprocess
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest

from appliance.config import (
    AUDIT_S3_KEYS,
    BACKUP_S3_KEYS,
    OWN_USER_COMPONENTS,
    S3_KEY_PAIRS,
    HostConfig,
    TenantConfig,
    load_host_config,
)
from appliance.objectstore import seaweed
from appliance.objectstore.credentials import S3Credentials, tenant_credentials
from appliance.objectstore.paths import store_paths
from tests.support import isolation
from tests.support.deployment import BIN, LOCAL_INVENTORY, changed_operations, deploy_or_fail, status_json
from tests.support.frontdoor import issue_token
from tests.support.paths import REPO

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

# The last commit that landed before each component had a user of its own (the agents alone had one).
PREVIOUS = "f4f79d4"


def _previous_sources(into: Path) -> Path:
    known = subprocess.run(["git", "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], cwd=REPO, capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"this checkout has no history back to {PREVIOUS} (a shallow clone): nothing to upgrade from")
    archive = subprocess.run(["git", "archive", "--format=tar", PREVIOUS], cwd=REPO, capture_output=True)
    assert archive.returncode == 0, f"git archive {PREVIOUS} failed: {archive.stderr!r}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="tar")
    return into


def _process_user(pid: int) -> str:
    """Who a process really runs as (status says who it should)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return pwd.getpwuid(int(next(line for line in status if line.startswith("Uid:")).split()[1])).pw_name


def _deploy_from(sources: Path, inventory: Path, tenant_id: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(sources)}
    result = subprocess.run([str(BIN / "pyinfra"), "-y", str(inventory), "deploy.py", "--data",
                             f"only_tenants={tenant_id}"], cwd=sources, env=env, capture_output=True, text=True,
                            timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"the previous commit's deploy failed:\n{output[-6000:]}"
    return output


def _split_s3_identities(host: HostConfig, tenant: TenantConfig, audit_keys_before: S3Credentials) -> None:
    names = {i["name"] for i in json.loads(store_paths(host).s3_config.read_text())["identities"]}
    assert seaweed.legacy_identity_name(tenant.id) not in names
    assert {seaweed.tenant_identity_name(tenant.id, pair) for pair in S3_KEY_PAIRS} <= names
    assert tenant_credentials(tenant, AUDIT_S3_KEYS) == audit_keys_before
    isolation.s3_pairs_confined(host, tenant)


def test_a_tenant_of_the_previous_commit_moves_to_a_user_per_component_with_its_data(
        deployed: HostConfig, tmp_path: Path) -> None:
    tenant_id = f"upg{os.getpid()}"
    line = '"globex": {"slot": 2},'
    added = f'"globex": {{"slot": 2}}, "{tenant_id}": {{"slot": 7, "audit": {{"retention_days": 1}}}},'
    sources = _previous_sources(tmp_path / "previous")
    old_inventory = tmp_path / "old_inventory.py"
    # The previous commit's deploy leaves the host's port rules alone: its rules know none of the other tenants'
    # new users, whose connections they would cut (and leave half-open in their Postgres) until the next deploy.
    store = '"objectstore": {"mode": "embedded"},'
    old_inventory.write_text((sources / "inventory" / "local.py").read_text().replace(line, added).replace(
        store, store + ' "common": {"port_firewall": False},'))
    inventory = tmp_path / "inventory.py"
    inventory.write_text(LOCAL_INVENTORY.read_text().replace(line, added))
    try:
        _deploy_from(sources, old_inventory, tenant_id)
        code, report = status_json()
        gateway_pid = report["tenants"][tenant_id]["components"]["gateway"]["pid"]
        assert _process_user(gateway_pid) == f"tenant-{tenant_id}", "the previous commit had no gateway user"

        # Data in every place the split moves: rows, a stream (thread entries), the audit trail.
        host = load_host_config()
        tenant = host.tenant(tenant_id)
        token = issue_token(tenant_id, str(uuid.uuid4()))
        with httpx.Client(base_url=f"http://127.0.0.1:{tenant.port('gateway')}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as api:
            house = api.post("/api/houses", json={"name": "before the upgrade"})
            assert house.status_code == 201, house.text
            thread = api.post("/api/threads", json={"house_id": house.json()["data"]["id"], "title": "kept"})
            thread_id = thread.json()["data"]["id"]
            texts = [f"entry {i}" for i in range(5)]
            for text in texts:
                entry = api.post(f"/api/threads/{thread_id}/entries", json={"id": str(uuid.uuid4()), "text": text})
                assert entry.status_code in (200, 201), entry.text

            audit_keys_before = tenant_credentials(tenant, AUDIT_S3_KEYS)
            assert not tenant.secret_path(BACKUP_S3_KEYS.access_key).exists()
            output = deploy_or_fail(inventory, "--data", f"only_tenants={tenant_id}")
            code, report = status_json()
            assert code == 0, report
            components = report["tenants"][tenant_id]["components"]
            assert all(c["healthy"] for c in components.values()), components
            for component, suffix in OWN_USER_COMPONENTS.items():
                assert _process_user(components[component]["pid"]) == f"t-{tenant_id}-{suffix}", component
            assert _process_user(components["postgres"]["pid"]) == f"tenant-{tenant_id}"
            # The previous commit's one S3 identity (both buckets, the audit shipper's keys) is gone from the store;
            # the audit shipper's pair kept its keys, and the backup has a pair of its own.
            _split_s3_identities(host, tenant, audit_keys_before)

            houses = api.get("/api/shapes/houses", params={"offset": "-1"})  # through the sync engine's new user
            assert houses.status_code == 200 and "before the upgrade" in houses.text, houses.text
            read = api.get(f"/api/threads/{thread_id}/stream", params={"offset": "-1"})
            assert read.status_code == 200, read.text
            assert [m["text"] for m in read.json() if m.get("type") == "entry"] == texts
            # And it keeps working under the new users: a write after the upgrade.
            after = api.post(f"/api/threads/{thread_id}/entries", json={"id": str(uuid.uuid4()), "text": "after"})
            assert after.status_code in (200, 201), after.text
        verify = subprocess.run([str(BIN / "appliance"), "audit", "verify", tenant_id], capture_output=True,
                                text=True, timeout=600)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # pgBackRest works with the backup's new pair (a backup now; the old pair no longer reaches its bucket).
        backup = subprocess.run([str(BIN / "appliance"), "backup", tenant_id], capture_output=True, text=True,
                                timeout=900)
        assert backup.returncode == 0, backup.stdout + backup.stderr
        again = deploy_or_fail(inventory, "--data", f"only_tenants={tenant_id}")
        assert changed_operations(again) == 0, again[-3000:]
        assert changed_operations(output) > 0
    finally:
        subprocess.run([str(BIN / "appliance"), "tenant", "destroy", tenant_id, "--yes-destroy-data",
                        "--skip-audit-ship"], capture_output=True, timeout=600)
        deploy_or_fail()  # the host as the rest of the suite expects it (the previous commit's sources replaced)
