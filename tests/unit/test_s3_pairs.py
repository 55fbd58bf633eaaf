"""The tenant's two S3 key pairs (issue 20): names from one table, identities scoped to one bucket each, the digest
tenant host and vault compare, and the rotation that replaces both. No store needed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.config import (
    AUDIT_S3_KEYS,
    BACKUP_S3_KEYS,
    S3_KEY_PAIRS,
    TENANT_SECRETS,
    SecretKind,
    TenantConfig,
    host_config,
)
from appliance.deploys.objectstore import EMPTY_SHA256, KeysDigest
from appliance.host.objectstore import keys_digest
from appliance.objectstore import seaweed
from appliance.objectstore.credentials import S3Credentials, tenant_keys_from_json, tenant_keys_to_json
from appliance.rotation.plan import rotation
from appliance.secrets import SECRET_READERS

ADMIN = S3Credentials("ADMIN", "admin-secret")


def test_each_pair_has_its_own_files_read_by_its_component_alone() -> None:
    assert AUDIT_S3_KEYS.files == ("s3_access_key", "s3_secret_key")  # hosts deployed before keep the shipper's keys
    files = [name for pair in S3_KEY_PAIRS for name in pair.files]
    assert len(set(files)) == len(files) == 4
    for pair in S3_KEY_PAIRS:
        assert TENANT_SECRETS[pair.access_key] is SecretKind.s3_access_key
        assert TENANT_SECRETS[pair.secret_key] is SecretKind.password
        assert all(SECRET_READERS[name] == (pair.component,) for name in pair.files)


def test_rotating_s3_keys_replaces_both_pairs_by_any_of_their_names() -> None:
    for name in ("s3_keys", *AUDIT_S3_KEYS.files, *BACKUP_S3_KEYS.files):
        found = rotation(name)
        assert found.name == "s3_keys"
        assert set(found.secret_files) == set(AUDIT_S3_KEYS.files + BACKUP_S3_KEYS.files)
        assert set(found.restarts) == {"audit", "backup"}


def _fragment() -> dict[str, object]:
    return {"id": "acme", "audit_bucket": "acme-audit", "backup_bucket": "acme-backup",
            "pairs": {"audit": {"access_key": "AUDITKEY", "secret_key": "audit-secret"},
                      "backup": {"access_key": "BACKUPKEY", "secret_key": "backup-secret"}},
            # What a release before the split reads (the audit pair); this one must ignore it.
            "access_key": "AUDITKEY", "secret_key": "audit-secret"}


def test_each_identity_is_scoped_to_its_own_bucket_and_the_flat_keys_are_ignored() -> None:
    identities = {i["name"]: i for i in json.loads(seaweed.render_s3_config(ADMIN, [_fragment()]))["identities"]}
    assert set(identities) == {seaweed.ADMIN_IDENTITY, "tenant-acme.audit", "tenant-acme.backup"}
    audit, backup = identities["tenant-acme.audit"], identities["tenant-acme.backup"]
    assert {a.split(":", 1)[1] for a in audit["actions"]} == {"acme-audit"}
    assert {a.split(":", 1)[1] for a in backup["actions"]} == {"acme-backup"}
    assert [c["accessKey"] for c in audit["credentials"]] == ["AUDITKEY"]
    assert [c["accessKey"] for c in backup["credentials"]] == ["BACKUPKEY"]
    # Only the shipper's identity may set retention on the audit bucket; the backup's never gets retention rights.
    assert "PutObjectRetention:acme-audit" in audit["actions"]
    assert not any("Retention" in a or "ObjectLock" in a for a in backup["actions"])


def test_a_fragment_of_the_single_identity_renders_as_before_and_has_no_pairs() -> None:
    legacy = {"id": "acme", "access_key": "OLDKEY", "secret_key": "old-secret", "audit_bucket": "acme-audit",
              "backup_bucket": "acme-backup"}
    identities = {i["name"]: i for i in json.loads(seaweed.render_s3_config(ADMIN, [legacy]))["identities"]}
    assert set(identities) == {seaweed.ADMIN_IDENTITY, "tenant-acme"}
    assert {a.split(":", 1)[1] for a in identities["tenant-acme"]["actions"]} == {"acme-audit", "acme-backup"}
    assert seaweed.fragment_keys(legacy) is None
    keys = seaweed.fragment_keys(_fragment())
    assert keys is not None and keys["backup"].access_key == "BACKUPKEY"


def test_identity_names_of_two_tenants_never_meet() -> None:
    """`acme-audit` is a valid tenant id: its legacy identity must not be acme's audit identity."""
    names = {seaweed.tenant_identity_name(t, p) for t in ("acme", "acme-audit", "acme-backup") for p in S3_KEY_PAIRS}
    legacy = {seaweed.legacy_identity_name(t) for t in ("acme", "acme-audit", "acme-backup")}
    assert len(names) == 6 and not names & legacy


def test_the_relayed_keys_round_trip_and_must_hold_both_pairs() -> None:
    keys = {"audit": S3Credentials("A" * 20, "a" * 40), "backup": S3Credentials("B" * 20, "b" * 40)}
    assert tenant_keys_from_json(json.loads(json.dumps(tenant_keys_to_json(keys)))) == keys
    try:
        tenant_keys_from_json({"audit": {"access_key": "A", "secret_key": "a"}})
    except ValueError as exc:
        assert "backup" in str(exc) and "a" * 40 not in str(exc)
    else:
        raise AssertionError("a keys file without the backup's pair was accepted")


def test_the_vaults_digest_is_what_the_tenant_hosts_fact_computes(tmp_path: Path) -> None:
    """The vault hashes the pairs it holds; the tenant host `cat`s its four files through sha256sum: equal for the
    same keys, or every deploy would relay them again."""
    keys = {"audit": S3Credentials("AUDITKEY0123456789AB", "audit-secret"),
            "backup": S3Credentials("BACKUPKEY0123456789A", "backup-secret")}
    paths = []
    for pair in S3_KEY_PAIRS:
        for name, value in zip(pair.files, (keys[pair.component].access_key, keys[pair.component].secret_key),
                               strict=True):
            path = tmp_path / name
            path.write_text(value + "\n")  # as the deploy writes secret files
            paths.append(str(path))
    command = KeysDigest().command(paths=tuple(paths))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()
    assert out == keys_digest(keys) != EMPTY_SHA256
    Path(paths[-1]).unlink()  # a tenant host not yet given the backup's pair: no digest at all
    assert subprocess.run(["sh", "-c", KeysDigest().command(paths=tuple(paths))], capture_output=True,
                          text=True).stdout.strip() == ""


def _tenant_with_audit_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TenantConfig:
    import os

    from appliance import secrets as secrets_module

    tenant = host_config("@local", {"common": {"tenants_root": str(tmp_path)},
                                    "tenants": {"acme": {"slot": 1}}}).tenant("acme")
    tenant.secrets_dir.mkdir(parents=True)
    # The component users exist only on a deployed host: files here are this process's own.
    monkeypatch.setattr(secrets_module, "secret_access", lambda t, name: (0o600, os.getuid(), os.getgid()))
    tenant.secret_path(AUDIT_S3_KEYS.access_key).write_text("AUDITKEY\n")
    tenant.secret_path(AUDIT_S3_KEYS.secret_key).write_text("audit-secret-value\n")
    return tenant


def test_an_upgraded_tenant_on_an_external_store_keeps_backing_up_with_the_one_identity_the_store_knows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.objectstore.credentials import tenant_keys
    from appliance.objectstore.probe import pairs_shared
    from appliance.secrets import seed_backup_pair

    tenant = _tenant_with_audit_pair(tmp_path, monkeypatch)
    said = seed_backup_pair(tenant)
    assert tenant.read_secret(BACKUP_S3_KEYS.access_key) == "AUDITKEY"
    assert tenant.read_secret(BACKUP_S3_KEYS.secret_key) == "audit-secret-value"
    assert "appliance tenant s3-keys acme --pair backup" in said[0] and "audit-secret-value" not in said[0]
    assert pairs_shared(tenant_keys(tenant))
    # Once the operator installed the backup's own pair, nothing is seeded again and the pairs are told apart.
    tenant.secret_path(BACKUP_S3_KEYS.access_key).write_text("BACKUPKEY\n")
    assert seed_backup_pair(tenant) == []
    assert tenant.read_secret(BACKUP_S3_KEYS.access_key) == "BACKUPKEY"
    assert not pairs_shared(tenant_keys(tenant))


def test_a_tenant_without_the_audit_pair_gets_no_seeded_backup_pair(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.secrets import seed_backup_pair

    tenant = _tenant_with_audit_pair(tmp_path, monkeypatch)
    tenant.secret_path(AUDIT_S3_KEYS.secret_key).unlink()
    assert seed_backup_pair(tenant) == []
    assert not tenant.secret_path(BACKUP_S3_KEYS.access_key).exists()


def test_staged_pairs_and_the_ones_they_replace_digest_alike_on_tenant_host_and_vault(tmp_path: Path) -> None:
    """While a rotation is staged for a vault (appliance.rotation.staged_keys), the tenant host hashes the staged
    files then the current ones, and the vault its pairs then their previous ones: equal once the vault holds both,
    so the deploy relays them once."""
    current = {"audit": S3Credentials("AUDITKEY0123456789AB", "audit-secret"),
               "backup": S3Credentials("BACKUPKEY0123456789A", "backup-secret")}
    staged = {"audit": S3Credentials("NEWAUDITKEY012345678", "new-audit-secret"),
              "backup": S3Credentials("NEWBACKUPKEY01234567", "new-backup-secret")}
    paths, staged_paths = [], []
    for pair in S3_KEY_PAIRS:
        for index, name in enumerate(pair.files):
            for keys, folder, listing in ((current, tmp_path, paths), (staged, tmp_path / "staged", staged_paths)):
                folder.mkdir(exist_ok=True)
                (folder / name).write_text((keys[pair.component].access_key, keys[pair.component].secret_key)[index]
                                           + "\n")
                listing.append(str(folder / name))

    def digest() -> str:
        command = KeysDigest().command(paths=tuple(paths), staged=tuple(staged_paths))
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.strip()

    assert digest() == keys_digest(staged, current) != keys_digest(current)
    fragment = seaweed.tenant_fragment(host_config("@local", {"tenants": {"acme": {"slot": 1}}}).tenant("acme"),
                                       staged, previous=current)
    assert seaweed.fragment_keys(fragment) == staged and seaweed.fragment_keys(fragment, previous=True) == current
    assert seaweed.fragment_keys(_fragment(), previous=True) is None
    Path(staged_paths[0]).unlink()  # staged files incomplete: the current ones alone count
    assert digest() == keys_digest(current)


def test_a_relayed_keys_file_carries_the_pairs_a_rotation_replaces(tmp_path: Path) -> None:
    from appliance.objectstore.credentials import PREVIOUS_KEY, read_tenant_keys_file

    new = {"audit": S3Credentials("N" * 20, "n" * 40), "backup": S3Credentials("M" * 20, "m" * 40)}
    old = {"audit": S3Credentials("O" * 20, "o" * 40), "backup": S3Credentials("P" * 20, "p" * 40)}
    path = tmp_path / "relayed.json"
    path.write_text(json.dumps({**tenant_keys_to_json(new), PREVIOUS_KEY: tenant_keys_to_json(old)}))
    assert read_tenant_keys_file(path) == (new, old)
    path.write_text(json.dumps(tenant_keys_to_json(new)))
    assert read_tenant_keys_file(path) == (new, None)


def test_rotating_s3_keys_of_a_tenant_on_a_vault_stages_them_and_changes_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.rotation.plan import ROTATIONS
    from appliance.rotation.staged_keys import staged, staged_path
    from appliance.rotation.steps import s3_keys

    tenant = _tenant_with_audit_pair(tmp_path, monkeypatch)
    for name in BACKUP_S3_KEYS.files:
        tenant.secret_path(name).write_text("backup-value\n")
    host = host_config("tenant", {"common": {"tenants_root": str(tmp_path)}, "objectstore_host": "vault",
                                  "tenants": {"acme": {"slot": 1}}})
    before = {name: tenant.read_secret(name) for pair in S3_KEY_PAIRS for name in pair.files}
    said: list[str] = []
    outcome = s3_keys(host, tenant, ROTATIONS["s3_keys"], said.append)
    assert outcome.detail == {"staged_for": "vault"} and outcome.restarted == []
    assert {name: tenant.read_secret(name) for name in before} == before
    first = staged(tenant)
    assert first is not None and all(first[p.component].access_key not in before.values() for p in S3_KEY_PAIRS)
    assert "next deploy" in said[0] and not any(first[p.component].secret_key in said[0] for p in S3_KEY_PAIRS)
    s3_keys(host, tenant, ROTATIONS["s3_keys"], said.append)  # again before the deploy: the same staged pairs
    assert staged(tenant) == first and "staged earlier kept" in said[1]
    staged_path(tenant, BACKUP_S3_KEYS.secret_key).unlink()
    assert staged(tenant) is None
