"""Rotating a tenant's backup cipher on the deployed embedded default (issue 20): a new repository generation with
its own stanza and full backup; the backups made before stay restorable with the kept passphrase, a target just
before the rotation fetching WAL from both generations; the old passphrase opens nothing new; the earlier
generation retired, repository and passphrase, once the new one holds the retention's full backups."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from typing import Any

import psycopg
import pytest

from appliance import pg
from appliance.backup import generations, pgbackrest
from appliance.backup.paths import backup_paths
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig
from appliance.objectstore.client import s3_client
from appliance.objectstore.credentials import tenant_credentials
from tests.support.backup import passphrase_opens
from tests.support.deployment import BIN, changed_operation_names, changed_operations, deploy_or_fail

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]

TENANT = "globex"
TABLE = "cipher_rotation_probe"


def appliance(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "appliance"), *args], capture_output=True, text=True, timeout=timeout)


def _mark(tenant: TenantConfig, label: str) -> None:
    with pg.connect(tenant) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (label text primary key, at timestamptz default now())")
        conn.execute(f"INSERT INTO {TABLE} (label) VALUES (%s)", [label])


def _labels_in_scratch(scratch: dict[str, Any], tenant: TenantConfig) -> set[str]:
    with psycopg.connect(host=str(scratch["postgres_socket_dir"]), port=int(scratch["postgres_port"]),
                         dbname=tenant.postgres.database, user="postgres",
                         password=tenant.read_secret("db_superuser_password")) as conn:
        return {row[0] for row in conn.execute(f"SELECT label FROM {TABLE}").fetchall()}


def _restore_scratch(*options: str) -> dict[str, Any]:
    result = appliance("restore", TENANT, "--to-scratch", "--json", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    restored: dict[str, Any] = json.loads(result.stdout)
    return restored


def test_backup_cipher_rotates_to_a_new_generation_and_old_backups_restore_until_retired(deployed: HostConfig) -> None:
    tenant = deployed.tenant(TENANT)
    before = generations.current(tenant)
    old = tenant.read_secret(generations.PASSPHRASE)
    run = uuid.uuid4().hex[:8]
    _mark(tenant, f"before-{run}")
    # Not archived yet on purpose: the segment holding this commit is archived after the rotation, into the new
    # generation, while the backup a restore to `target` starts from is in the old one.
    target = dt.datetime.now(dt.UTC)
    time.sleep(1.5)

    rotated = appliance("secret", "rotate", TENANT, "backup_cipher_passphrase")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    now = generations.current(tenant)
    assert now == before + 1
    assert f"repository generation {now} at {generations.repo_path(now)}" in rotated.stdout
    new = tenant.read_secret(generations.PASSPHRASE)
    assert new != old and old not in rotated.stdout + rotated.stderr and new not in rotated.stdout + rotated.stderr
    assert before in generations.kept(tenant)
    _mark(tenant, f"after-{run}")

    # The old passphrase opens the kept generation and nothing of the new one; the new one opens the new one.
    assert passphrase_opens(tenant, generations.repo_path(before), old)
    assert not passphrase_opens(tenant, generations.repo_path(now), old)
    assert passphrase_opens(tenant, generations.repo_path(now), new)

    # A target before the rotation: the old generation's backup and bundle, WAL from both generations.
    early = _restore_scratch("--time", target.isoformat())
    try:
        assert early["backup"]["repo"] == 2 and early["bundle"]["cipher_generation"] == before, early
        assert _labels_in_scratch(early["scratch"], tenant) >= {f"before-{run}"}
        assert f"after-{run}" not in _labels_in_scratch(early["scratch"], tenant)
    finally:
        appliance("restore", TENANT, "--drop-scratch", early["scratch"]["name"])
    latest = _restore_scratch()
    try:
        assert latest["backup"]["repo"] == 1 and latest["bundle"]["cipher_generation"] == now, latest
        assert {f"before-{run}", f"after-{run}"} <= _labels_in_scratch(latest["scratch"], tenant)
    finally:
        appliance("restore", TENANT, "--drop-scratch", latest["scratch"]["name"])

    # The root-only recovery keys carry both generations (a restore of a lost tenant directory needs them).
    keys = json.loads(backup_paths(tenant).recovery_keys_file.read_text())
    assert keys["cipher_generation"] == now and keys[generations.PASSPHRASE] == new
    assert keys["kept_cipher_passphrases"][str(before)] == old

    # A rotation stopped right after naming its generation (the old passphrase kept, the new generation named, its
    # passphrase not written yet): running the command again finishes it rather than beginning another.
    owner = pgbackrest.tenant_ids(tenant)
    kept_file = tenant.secrets_dir / generations.kept_secret(now)
    kept_file.write_text(new + "\n")
    os.chown(kept_file, *owner)
    kept_file.chmod(0o600)
    backup_paths(tenant).generation_file.write_text(f"{now + 1}\n")
    finished = appliance("secret", "rotate", TENANT, "backup_cipher_passphrase")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "finishing the rotation to generation" in finished.stdout
    assert generations.current(tenant) == now + 1 and generations.kept(tenant)[:2] == [now, before]
    assert tenant.read_secret(generations.PASSPHRASE) not in (old, new)
    assert passphrase_opens(tenant, generations.repo_path(now + 1), tenant.read_secret(generations.PASSPHRASE))
    interrupted, now = now, now + 1

    # A second full backup in the newest generation: the retention's 2 fulls, so every earlier generation goes.
    assert tenant.backup.retention_full == 2
    backup = appliance("backup", TENANT, "--full")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "retired: cipher generations" in backup.stdout and str(before) in backup.stdout
    assert generations.kept(tenant) == []
    assert not (tenant.secrets_dir / generations.kept_secret(before)).exists()
    assert not (tenant.secrets_dir / generations.kept_secret(interrupted)).exists()
    s3 = s3_client(deployed, tenant_credentials(tenant, BACKUP_S3_KEYS))
    listed = s3.list_objects_v2(Bucket=tenant.backup_bucket, Prefix=generations.repo_path(before).strip("/") + "/")
    assert listed.get("KeyCount", 0) == 0
    assert "[global:restore]" not in backup_paths(tenant).config.read_text()
    assert "kept_cipher_passphrases" not in json.loads(backup_paths(tenant).recovery_keys_file.read_text())
    # Its time is no longer restorable, and the refusal says from when on it is.
    gone = appliance("restore", TENANT, "--to-scratch", "--time", target.isoformat())
    assert gone.returncode == 2 and "earliest point that can be restored" in gone.stderr, gone.stderr

    verify = appliance("audit", "verify", TENANT)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    with pg.connect(tenant) as conn:
        recorded = conn.execute(
            "SELECT detail FROM audit.events WHERE action = 'operator.secret.rotated' "
            "AND detail->>'secret' = 'backup_cipher_passphrase' ORDER BY seq DESC LIMIT 1").fetchone()
    assert recorded and recorded[0]["generation"] == now and recorded[0]["kept"][:2] == [interrupted, before]
    assert recorded[0]["resumed"] is True, recorded
    redeploy = deploy_or_fail()
    assert changed_operations(redeploy) == 0, changed_operation_names(redeploy)

