"""Backup cipher generations (issue 20): what the host's files say, what pgBackRest is given for each command,
and what a restore and the recovery keys carry. No store needed (tests/deploy/test_backup_cipher.py rotates one
for real)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from appliance.backup import bundle, generations, pgbackrest
from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.backup.restore import Keys
from appliance.backup.stanza import load_recovery_keys, recovery_keys
from appliance.backup.target import BackupSet
from appliance.config import BACKUP_S3_KEYS, HostConfig, TenantConfig, host_config
from appliance.objectstore.credentials import S3Credentials


def _host(tmp_path: Path) -> HostConfig:
    # Its own config dir: the host's recovery keys (read for the capsule's key) are this test's, not the machine's.
    return host_config("@local", {"common": {"tenants_root": str(tmp_path), "config_dir": str(tmp_path / "etc")},
                                  "tenants": {"acme": {"slot": 1}}})


def _secrets(tenant: TenantConfig, **files: str) -> None:
    tenant.secrets_dir.mkdir(parents=True, exist_ok=True)
    for name, value in {BACKUP_S3_KEYS.access_key: "AK", BACKUP_S3_KEYS.secret_key: "SK",
                        generations.PASSPHRASE: "current-pass", **files}.items():
        (tenant.secrets_dir / name).write_text(value + "\n")


def _rotated(tmp_path: Path) -> TenantConfig:
    """Generation 3 current, 2 and 1 kept; a stray file that is no kept generation."""
    tenant = _host(tmp_path).tenant("acme")
    _secrets(tenant, **{generations.kept_secret(2): "pass-2", generations.kept_secret(1): "pass-1",
                        generations.kept_secret(7): "from-a-later-generation", f"{generations.PASSPHRASE}.gx": "x"})
    backup_paths(tenant).generation_file.parent.mkdir(parents=True, exist_ok=True)
    backup_paths(tenant).generation_file.write_text("3\n")
    return tenant


def _section(config: str, name: str) -> str:
    match = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", config, re.M | re.S)
    return match.group(1) if match else ""


def test_a_tenant_never_rotated_has_one_generation_at_the_path_it_always_had(tmp_path: Path) -> None:
    host = _host(tmp_path)
    tenant = host.tenant("acme")
    assert generations.layout(tenant) == [generations.Generation(1, 1, "/pgbackrest", generations.PASSPHRASE)]
    config = pgbackrest.render_config(host, tenant)
    assert "repo1-path=/pgbackrest\n" in _section(config, "global")
    assert "repo2" not in config and "[global:" not in config
    assert "REPO2" not in pgbackrest.render_wrapper(tenant)


def test_kept_generations_are_read_by_restores_and_never_written(tmp_path: Path) -> None:
    host = _host(tmp_path)
    tenant = _rotated(tmp_path)
    assert [(g.number, g.repo, g.path) for g in generations.layout(tenant)] == [
        (3, 1, "/pgbackrest-g3"), (2, 2, "/pgbackrest-g2"), (1, 3, "/pgbackrest")]
    assert generations.passphrases(tenant) == {3: "current-pass", 2: "pass-2", 1: "pass-1"}
    config = pgbackrest.render_config(host, tenant)
    written = _section(config, "global")
    assert "repo1-path=/pgbackrest-g3\n" in written and "repo2" not in written and "repo3" not in written
    for command in ("restore", "archive-get", "info"):
        read = _section(config, f"global:{command}")
        assert "repo2-path=/pgbackrest-g2\n" in read and "repo3-path=/pgbackrest\n" in read, command
        assert "repo3-cipher-type=aes-256-cbc\n" in read and "repo1" not in read
    for command in ("archive-push", "backup", "expire", "check", "stanza-create"):
        assert f"[global:{command}]" not in config
    wrapper = pgbackrest.render_wrapper(tenant)
    assert "PGBACKREST_REPO2_CIPHER_PASS=$(secret backup_cipher_passphrase.g2)" in wrapper
    assert "PGBACKREST_REPO3_CIPHER_PASS=$(secret backup_cipher_passphrase.g1)" in wrapper
    assert "pass-" not in wrapper + config  # names of files, never values


def test_a_generation_file_that_is_no_number_is_an_error_not_generation_1(tmp_path: Path) -> None:
    tenant = _rotated(tmp_path)
    backup_paths(tenant).generation_file.write_text("three\n")
    with pytest.raises(BackupError, match="not a repository generation number"):
        generations.current(tenant)


def test_a_new_generation_waits_only_for_a_free_repository_index() -> None:
    assert generations.rotation_refusal(0, 0, 2) is None
    assert generations.rotation_refusal(2, 0, 2) is None
    assert generations.rotation_refusal(3, 2, 2) is None  # the kept ones are retired first
    refusal = generations.rotation_refusal(3, 1, 2)
    assert refusal and "holds 1" in refusal and "appliance backup <tenant> --full" in refusal


def test_a_rotation_stopped_half_way_is_finished_not_begun_again() -> None:
    missing, empty, ok, foreign = 1, 2, 0, 5  # pgbackrest info's stanza codes
    assert generations.stopped_half_way(3, [2, 1], missing, 0)  # named, no stanza yet
    assert generations.stopped_half_way(3, [2], empty, 0)  # stanza, no full backup yet
    assert not generations.stopped_half_way(3, [2], ok, 1)  # finished
    assert not generations.stopped_half_way(3, [1], missing, 0)  # generation 2 retired: nothing begun
    assert not generations.stopped_half_way(1, [], empty, 0)  # never rotated, no backup yet
    assert not generations.stopped_half_way(3, [2], foreign, 0)


def test_a_backup_names_its_repository_and_a_restore_asks_for_it(tmp_path: Path) -> None:
    from appliance.backup.restore import restore_options

    entry = {"label": "20261207-153325F", "type": "full", "timestamp": {"start": 1, "stop": 2},
             "database": {"id": 1, "repo-key": 2}}
    chosen = BackupSet.from_info(entry)
    assert chosen.repo == 2 and chosen.as_dict()["repo"] == 2
    assert BackupSet.from_info({**entry, "database": {"id": 1}}).repo == 1
    options = restore_options(_host(tmp_path).tenant("acme"), chosen, None)
    assert options[:2] == ["--repo=2", "--set=20261207-153325F"]


def test_a_bundle_names_the_generation_that_sealed_it_and_older_ones_are_generation_1() -> None:
    import datetime as dt

    made = bundle.Descriptor(key="bundles/x.bundle", created_at=dt.datetime.now(dt.UTC), size=1, sha256="0" * 64,
                             appliance_version="v", postgres_version="15", backup_label=None, streams=0,
                             stream_bytes=0, files=0, generation=4)
    assert bundle.Descriptor.from_dict(made.as_dict()).generation == 4
    older = {k: v for k, v in made.as_dict().items() if k != "cipher_generation"}
    assert bundle.Descriptor.from_dict(older).generation == 1
    keys = Keys(S3Credentials("AK", "SK"), {4: "p4", 3: "p3"}, 4)
    assert keys.passphrase_for(made) == "p4"
    assert "p4" not in repr(keys)
    with pytest.raises(BackupError, match="cipher generation 1, which is retired"):
        keys.passphrase_for(bundle.Descriptor.from_dict(older))


def test_recovery_keys_carry_the_generations_only_once_there_are_any(tmp_path: Path) -> None:
    fresh = _host(tmp_path / "fresh").tenant("acme")
    _secrets(fresh)
    # As written before rotations existed (with the capsule's key): a host's copy stays as it is on upgrade.
    assert set(recovery_keys(fresh)) == {BACKUP_S3_KEYS.access_key, BACKUP_S3_KEYS.secret_key,
                                          generations.PASSPHRASE, "secrets_key"}
    tenant = _rotated(tmp_path / "rotated")
    keys = recovery_keys(tenant)
    assert keys["cipher_generation"] == 3 and keys["kept_cipher_passphrases"] == {"2": "pass-2", "1": "pass-1"}
    path = tmp_path / "offline.json"
    path.write_text(json.dumps({"tenant": "acme", **keys}))
    loaded = load_recovery_keys(tenant, path)
    assert (loaded.generation, loaded.passphrase, loaded.kept) == (3, "current-pass", {2: "pass-2", 1: "pass-1"})
    assert "pass" not in repr(loaded)
    path.write_text(json.dumps({"tenant": "acme", **keys, "kept_cipher_passphrases": ["pass-2"]}))
    with pytest.raises(BackupError, match="malformed"):
        load_recovery_keys(tenant, path)


def test_a_lost_tenant_directory_gets_its_generations_back_from_the_recovery_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = (os.getuid(), os.getgid())
    monkeypatch.setattr(pgbackrest, "tenant_ids", lambda tenant: ids)
    monkeypatch.setattr("appliance.secrets.secret_access", lambda tenant, name: (0o600, *ids))
    tenant = _host(tmp_path).tenant("acme")
    tenant.secrets_dir.mkdir(parents=True)
    backup_paths(tenant).generation_file.parent.mkdir(parents=True)
    (tenant.secrets_dir / generations.kept_secret(2)).write_text("already-here\n")
    installed = generations.install(tenant, 3, "current-pass", {2: "pass-2", 1: "pass-1"})
    assert installed == ["repository generation 3", generations.PASSPHRASE, generations.kept_secret(1)]
    assert generations.passphrases(tenant) == {3: "current-pass", 2: "already-here", 1: "pass-1"}
    assert (tenant.secrets_dir / generations.kept_secret(1)).stat().st_mode & 0o777 == 0o600
    assert generations.install(tenant, 3, "current-pass", {2: "pass-2", 1: "pass-1"}) == []
