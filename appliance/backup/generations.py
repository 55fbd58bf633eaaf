"""Generations of a tenant's backup repository: one per backup cipher passphrase.

pgBackRest encrypts a repository with one passphrase for the repository's whole life (each file's key derives
from a random sub-passphrase stored under it). A new passphrase therefore means a new repository: generation N+1,
in its own path of the same bucket, with its own stanza and a full backup taken at once. The generations before
it are kept, each with its passphrase, until the new one holds the retention's full backups (`retention_full`):
all they hold is then older than what retention keeps, and they are deleted, their passphrases with them.

On the host:
- `backup/cipher-generation`: the current generation's number (absent: 1, the repository of the first deploy,
  whose path has no suffix);
- `secrets/backup_cipher_passphrase`: the current generation's passphrase;
- `secrets/backup_cipher_passphrase.g<N>`: the passphrase of each kept earlier generation (the backup's alone,
  like the current one).

pgBackRest sees the current generation as repo1 and the kept ones as repo2.. (newest first), the kept ones only
for the commands that read (`restore`, `archive-get`, `info`; pgbackrest.conf.j2): backups, WAL archiving and
expiry write the current generation alone. A restore picks from whichever generation holds the backup that
reaches its target, and fetches WAL from any of them: a target just after a rotation needs the old generation's
backup and WAL from both.

    >>> rotate(host, tenant, print).generation      # 2: a new repository, its stanza and a full backup
    >>> retire_obsolete(host, tenant)               # [1] once generation 2 holds the retention's full backups
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.backup.errors import BackupError
from appliance.backup.paths import REPO_PATH, backup_paths
from appliance.config import SecretKind, TenantConfig

PASSPHRASE = "backup_cipher_passphrase"
# pgBackRest 2.45 knows repo1 to repo4: the current generation and three earlier ones.
MAX_REPOS = 4
MAX_KEPT = MAX_REPOS - 1

Say = Callable[[str], None]


def repo_path(generation: int) -> str:
    """The repository's path in the bucket; the first generation keeps the path hosts deployed before have."""
    return REPO_PATH if generation == 1 else f"{REPO_PATH}-g{generation}"


def kept_secret(generation: int) -> str:
    """The secret file that keeps an earlier generation's passphrase."""
    return f"{PASSPHRASE}.g{generation}"


@dataclass(frozen=True)
class Generation:
    number: int
    repo: int  # pgBackRest's repository index: 1 for the current generation
    path: str
    secret: str  # the secret file holding its passphrase

    @property
    def prefix(self) -> str:
        """Its objects' key prefix in the backup bucket."""
        return self.path.strip("/") + "/"


def current(tenant: TenantConfig) -> int:
    path = backup_paths(tenant).generation_file
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise BackupError(f"{path} holds {text[:20]!r}, not a repository generation number")
    return int(text)


def kept(tenant: TenantConfig) -> list[int]:
    """The earlier generations whose passphrase is kept, newest first."""
    now = current(tenant)
    prefix = f"{PASSPHRASE}.g"
    numbers = []
    try:
        names = os.listdir(tenant.secrets_dir)
    except FileNotFoundError:
        return []
    for name in names:
        suffix = name.removeprefix(prefix)
        if name.startswith(prefix) and suffix.isdigit() and int(suffix) < now:
            numbers.append(int(suffix))
    return sorted(numbers, reverse=True)


def layout(tenant: TenantConfig) -> list[Generation]:
    """The current generation (repo1), then the kept ones, newest first (repo2..)."""
    now = current(tenant)
    generations = [Generation(now, 1, repo_path(now), PASSPHRASE)]
    for index, number in enumerate(kept(tenant)[:MAX_KEPT], start=2):
        generations.append(Generation(number, index, repo_path(number), kept_secret(number)))
    return generations


def read_passphrase(tenant: TenantConfig, generation: Generation) -> str:
    return (tenant.secrets_dir / generation.secret).read_text().strip()


def passphrases(tenant: TenantConfig) -> dict[int, str]:
    """Each generation's passphrase by its number (what opens the bundles sealed in it)."""
    return {g.number: read_passphrase(tenant, g) for g in layout(tenant)}


def _write_passphrase(tenant: TenantConfig, name: str, value: str) -> None:
    """A passphrase file in one rename, with the access the backup's passphrase has."""
    from appliance.objectstore.files import write_atomic
    from appliance.secrets import secret_access

    mode, uid, gid = secret_access(tenant, PASSPHRASE) if os.geteuid() == 0 else (0o600, os.geteuid(), os.getegid())
    write_atomic(tenant.secrets_dir / name, (value.rstrip("\n") + "\n").encode(), mode, (uid, gid))


def _write_generation(tenant: TenantConfig, number: int) -> None:
    from appliance.backup.pgbackrest import tenant_ids
    from appliance.objectstore.files import write_atomic

    write_atomic(backup_paths(tenant).generation_file, f"{number}\n".encode(), 0o600, tenant_ids(tenant))


def install(tenant: TenantConfig, number: int, current_passphrase: str, kept_passphrases: dict[int, str]) -> list[str]:
    """Put back a tenant's generations from its recovery keys where the files are gone (a restore of a tenant
    whose directory was lost): what is there is the current truth and stays."""
    installed = []
    if number != 1 and not backup_paths(tenant).generation_file.exists():
        _write_generation(tenant, number)
        installed.append(f"repository generation {number}")
    if not (tenant.secrets_dir / PASSPHRASE).exists():
        _write_passphrase(tenant, PASSPHRASE, current_passphrase)
        installed.append(PASSPHRASE)
    for kept_number, value in kept_passphrases.items():
        name = kept_secret(kept_number)
        if not (tenant.secrets_dir / name).exists():
            _write_passphrase(tenant, name, value)
            installed.append(name)
    return installed


# -- rotation ------------------------------------------------------------------------------------------------
@dataclass
class Rotated:
    generation: int
    kept: list[int]
    backup: str
    retired: list[int] = field(default_factory=list)
    resumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "kept": self.kept, "backup": self.backup, "retired": self.retired,
                "resumed": self.resumed}


def rotation_refusal(kept_count: int, current_fulls: int, retention_full: int) -> str | None:
    """Why a new generation cannot be started now (None: it can). Earlier generations are retired first when the
    current one holds the retention's full backups, so this is only when pgBackRest has no repository index left."""
    if kept_count < MAX_KEPT or current_fulls >= retention_full:
        return None
    return (f"{kept_count} earlier repository generations are kept already (pgBackRest reads at most {MAX_REPOS} "
            f"repositories), until the current one holds {retention_full} full backups (it holds {current_fulls}); "
            "take a full backup (`appliance backup <tenant> --full`) and rotate again")


def stopped_half_way(current_number: int, kept_numbers: list[int], stanza_code: int, current_fulls: int) -> bool:
    """A rotation to `current_number` was begun (the one before it is kept) and not finished: its repository has
    no stanza yet, or no full backup yet."""
    from appliance.backup.stanza import MISSING_STANZA, STANZA_OK

    if current_number - 1 not in kept_numbers:
        return False
    return stanza_code in MISSING_STANZA or (stanza_code in STANZA_OK and current_fulls == 0)


def _fulls(info: dict[str, Any]) -> int:
    from appliance.backup.target import backup_sets

    return sum(1 for b in backup_sets(info) if b.type == "full")


def rotate(host: Any, tenant: TenantConfig, say: Say) -> Rotated:
    """A new passphrase and the repository generation it encrypts, with its stanza and a full backup; the current
    one kept with its passphrase. A rotation that stopped half way (a new generation without its stanza or its
    first full backup) is finished, not started again.

    Between the new passphrase and the new stanza (a second or two) Postgres's archive_command fails; Postgres
    keeps the WAL and retries it, so nothing is lost and nothing restarts."""
    from appliance.backup import pgbackrest
    from appliance.backup.stanza import MISSING_STANZA, STANZA_OK, ensure_recovery_keys, status_of
    from appliance.backup.take import take_backup
    from appliance.secrets import generate

    # The files as the generation state now says (a rotation stopped half way may have left them behind it).
    pgbackrest.ensure_files(host, tenant)
    retired = retire_obsolete(host, tenant)
    if retired:
        say(f"  earlier generations {retired} retired: the current one holds the retention's full backups")
    now = current(tenant)
    info = pgbackrest.info(tenant)
    code, message = status_of(info)
    resumed = stopped_half_way(now, kept(tenant), code, _fulls(info))
    if not resumed:
        if code not in STANZA_OK:
            raise BackupError(f"the repository of generation {now} is not usable ({message}); a new one is not "
                              "started over it: see `appliance status`")
        refusal = rotation_refusal(len(kept(tenant)), _fulls(info), tenant.backup.retention_full)
        if refusal:
            raise BackupError(refusal)
        # In this order, so that a rotation stopped anywhere is finished by running it again: the old passphrase
        # kept, then the new generation named, then its passphrase.
        _write_passphrase(tenant, kept_secret(now), tenant.read_secret(PASSPHRASE))
        now += 1
        _write_generation(tenant, now)
    else:
        say(f"  finishing the rotation to generation {now} begun earlier")
    if tenant.read_secret(PASSPHRASE) == read_passphrase(tenant, layout(tenant)[1]):
        _write_passphrase(tenant, PASSPHRASE, generate(SecretKind.password))
    pgbackrest.ensure_files(host, tenant)
    ensure_recovery_keys(tenant)
    say(f"  new passphrase; repository generation {now} at {repo_path(now)} in {tenant.backup_bucket}")
    if not resumed or code in MISSING_STANZA:
        pgbackrest.run(tenant, "stanza-create", timeout=300)
    # A WAL switch archived into the new generation: archiving works again.
    pgbackrest.run(tenant, "check", timeout=300)
    say("  stanza created and WAL archiving checked; taking a full backup into it")
    result = take_backup(host, tenant, "full")
    say(f"  full backup {result.backup.label} and bundle {result.bundle.key} in generation {now}")
    kept_now = [g.number for g in layout(tenant)[1:]]
    say(f"  kept for restores until generation {now} holds {tenant.backup.retention_full} full backups: "
        f"generations {kept_now}")
    return Rotated(now, kept_now, result.backup.label, retired + result.retired_generations, resumed)


# -- retirement ----------------------------------------------------------------------------------------------
def retire_obsolete(host: Any, tenant: TenantConfig, info: dict[str, Any] | None = None) -> list[int]:
    """Delete the kept generations once the current one holds the retention's full backups (everything they hold
    is older than what retention keeps), then their passphrases; their numbers. The bucket is versioned: the
    deletes are delete markers, as pgBackRest's own expiry makes, over data no kept passphrase opens any more."""
    from appliance.backup import bundle, pgbackrest
    from appliance.backup.stanza import ensure_recovery_keys
    from appliance.config import BACKUP_S3_KEYS
    from appliance.objectstore.credentials import tenant_credentials

    old = layout(tenant)[1:]
    if not old:
        return []
    if _fulls(info if info is not None else pgbackrest.info(tenant)) < tenant.backup.retention_full:
        return []
    client = bundle.client_for(host, tenant_credentials(tenant, BACKUP_S3_KEYS))
    for generation in old:
        delete_prefix(client, tenant.backup_bucket, generation.prefix)
        # Its bundles went with the full backups they were made with (take.take_backup expires them by time);
        # the passphrase goes last, once nothing it opens is left.
        (tenant.secrets_dir / generation.secret).unlink(missing_ok=True)
    pgbackrest.ensure_files(host, tenant)
    ensure_recovery_keys(tenant)
    return [g.number for g in old]


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix`; how many."""
    from botocore.exceptions import BotoCoreError, ClientError

    from appliance.objectstore.client import delete_objects

    deleted = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            deleted += delete_objects(client, bucket, [{"Key": item["Key"]} for item in page.get("Contents", [])])
    except (BotoCoreError, ClientError, RuntimeError) as exc:
        raise BackupError(f"deleting {prefix} from {bucket} failed: {exc}") from None
    return deleted
