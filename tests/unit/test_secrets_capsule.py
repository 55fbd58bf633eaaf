"""The secrets capsule (issue 20): bundles carry every secret sealed by root with a key of the root-only recovery
keys, so the backup, which builds them as the tenant's user, need not read them; and the secret files' owners and
groups let in their readers alone (the tenant's user is in the groups of the dirs it backs up)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance import secrets as secrets_module
from appliance.backup import capsule, restore
from appliance.backup.errors import BackupError
from appliance.config import TENANT_SECRETS, TenantConfig, host_config


@pytest.fixture
def tenant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TenantConfig:
    ids = (os.getuid(), os.getgid())
    monkeypatch.setattr("appliance.backup.pgbackrest.tenant_ids", lambda t: ids)
    found = host_config("@local", {"common": {"tenants_root": str(tmp_path)},
                                   "tenants": {"acme": {"slot": 1}}}).tenant("acme")
    found.secrets_dir.mkdir(parents=True)
    found.backup_dir.mkdir(parents=True)
    for name in ("jwt_signing_key", "secrets_encryption_key", "db_superuser_password"):
        found.secret_path(name).write_text(f"value of {name}\n")
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="root seals the capsule (it reads every secret)")
def test_root_seals_the_secrets_and_only_the_key_opens_them(tenant: TenantConfig, tmp_path: Path) -> None:
    key = capsule.new_key()
    assert capsule.ensure(tenant, key) == [f"secrets capsule {capsule.capsule_file(tenant)}"]
    sealed = capsule.capsule_file(tenant).read_bytes()
    assert b"value of" not in sealed and capsule.current(tenant, key)
    assert capsule.ensure(tenant, key) == []  # nothing changed, nothing written
    assert capsule.open_capsule(capsule.capsule_file(tenant), key) == {
        name: f"value of {name}" for name in ("jwt_signing_key", "secrets_encryption_key", "db_superuser_password")}
    with pytest.raises(BackupError, match="do not open with the recovery keys' secrets_key"):
        capsule.open_capsule(capsule.capsule_file(tenant), capsule.new_key())
    # A secret changed: the capsule is stale until sealed again.
    tenant.secret_path("jwt_signing_key").write_text("a new key\n")
    assert not capsule.current(tenant, key)
    assert capsule.ensure(tenant, key) and capsule.current(tenant, key)
    assert capsule.open_capsule(capsule.capsule_file(tenant), key)["jwt_signing_key"] == "a new key"


def test_a_restore_opens_the_capsule_of_a_bundle_or_reads_an_older_bundles_plain_secrets(
        tenant: TenantConfig, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("root seals the capsule")
    key = capsule.new_key()
    capsule.ensure(tenant, key)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    (unpacked / capsule.IN_BUNDLE).write_bytes(capsule.capsule_file(tenant).read_bytes())
    assert restore.bundle_secrets(unpacked, key)["secrets_encryption_key"] == "value of secrets_encryption_key"
    with pytest.raises(BackupError, match="pass the recovery keys file"):
        restore.bundle_secrets(unpacked, None)
    older = tmp_path / "older"
    (older / "secrets").mkdir(parents=True)
    (older / "secrets" / "jwt_signing_key").write_text("plain\n")
    assert restore.bundle_secrets(older, None) == {"jwt_signing_key": "plain\n"}


def test_a_secret_file_lets_in_its_readers_and_never_the_tenants_user_unless_it_reads_it(
        tenant: TenantConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # uid == gid == a number per component; the tenant's user (Postgres, the backup) is 1000.
    numbers = {"postgres": 1000, "backup": 1000, "gateway": 1001, "sync": 1002, "agents": 1003, "streams": 1004,
               "identity": 1005, "audit": 1006}
    monkeypatch.setattr(secrets_module, "component_ids", lambda t, c: (numbers[c], numbers[c]))
    access = {name: secrets_module.secret_access(tenant, name) for name in TENANT_SECRETS}
    for name, (mode, uid, gid) in access.items():
        readers = {numbers[c] for c in secrets_module.SECRET_READERS[name]}
        allowed = {uid} | ({gid} if mode & 0o040 else set())
        assert allowed == readers, name  # exactly its readers, by owner or group
        assert mode & 0o007 == 0
    # The agents' token: the agents' user owns it, the gateway reads it through its group, and the tenant's user,
    # in the agents' group for the agents' files, does not.
    assert access["agents_internal_token"] == (0o640, 1003, 1001)
    assert access["db_superuser_password"] == access["backup_cipher_passphrase"] == (0o600, 1000, 1000)
    assert access["jwt_signing_key"] == (0o600, 1001, 1001)
