"""Replacing one secret of a tenant on its host: the new value where it is checked and in its file, then its readers
restarted (appliance.rotation.plan says which, in which order). Run as root by `appliance secret rotate`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from psycopg import sql

from appliance import pg
from appliance.config import DB_SUPERUSER, S3_KEY_PAIRS, TENANT_SECRETS, HostConfig, SecretKind, TenantConfig
from appliance.objectstore.files import write_atomic
from appliance.restarts import Say
from appliance.restarts import restart_components as restart
from appliance.rotation.plan import Rotation
from appliance.secrets import generate


class RotationError(RuntimeError):
    """A rotation that could not be done or finished; the message says what state the tenant is left in."""


@dataclass
class Outcome:
    """What a rotation did, for the operator and the audit trail (never a value)."""

    secret: str
    restarted: list[str] = field(default_factory=list)
    # Seconds between the new value taking effect and the last reader answering its health probe again.
    window_s: float = 0.0
    detail: dict[str, object] = field(default_factory=dict)


def write_secret(tenant: TenantConfig, name: str, value: str) -> None:
    """Replace a secret file in one rename: readers see the old value or the new one, never a torn file (with
    the mode and owners the deploy gives it)."""
    from appliance.secrets import secret_access

    mode, uid, gid = secret_access(tenant, name)
    write_atomic(tenant.secret_path(name), (value.rstrip("\n") + "\n").encode(), mode, (uid, gid))


def _role_of(secret: str) -> str:
    return DB_SUPERUSER if secret == "db_superuser_password" else secret.removeprefix("db_").removesuffix("_password")


def db_password(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """ALTER ROLE with the new password's SCRAM verifier (the clear password never reaches Postgres's logs),
    then the file at once: a connection opened in between is the only one that can miss."""
    from appliance.host.postgres import scram_verifier

    role = _role_of(rotation.name)
    new = generate(SecretKind.password)
    with pg.connect(tenant, database="postgres") as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(new))))
        write_secret(tenant, rotation.name, new)
    started = time.monotonic()
    restarted = restart(host, tenant, rotation.restarts, say)
    return Outcome(rotation.name, restarted, time.monotonic() - started, {"role": role})


def _followed() -> None:
    """Until every process that follows the file (appliance.secretfile) has the new value and its checkers no
    longer accept the old one."""
    from appliance.secretfile import GRACE_S, RECHECK_S

    time.sleep(RECHECK_S + GRACE_S + 0.5)


def plain_file(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """A secret only files hold: write it; the processes following the file take it up (the checking side still
    accepts the old value for a few seconds), the ones reading it at start restart. Returns once the old value is
    refused everywhere."""
    write_secret(tenant, rotation.name, generate(TENANT_SECRETS[rotation.name]))
    started = time.monotonic()
    restarted = restart(host, tenant, rotation.restarts, say)
    _followed()
    return Outcome(rotation.name, restarted, time.monotonic() - started)


def _reseal(tenant: TenantConfig, old: str, new: str) -> tuple[int, int]:
    """Re-seal with `new` every row of the secrets table that does not open with it, in one transaction;
    (rows, re-sealed)."""
    from appliance.gateway.core.security import decrypt_secret, encrypt_secret

    resealed = 0
    with pg.connect(tenant) as conn, conn.transaction():
        rows = conn.execute("SELECT id, house_id, value FROM public.secrets FOR UPDATE").fetchall()
        for secret_id, house_id, value in rows:
            try:
                decrypt_secret(new, secret_id, house_id, value)
                continue
            except ValueError:
                plain = decrypt_secret(old, secret_id, house_id, value)
            conn.execute("UPDATE public.secrets SET value = %s WHERE id = %s",
                         [encrypt_secret(new, secret_id, house_id, plain), secret_id])
            resealed += 1
    return len(rows), resealed


def reencrypt(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """The secrets table under a new key, with the gateway serving throughout: the new key goes into the file
    (the old one kept beside it until the end, so no row can lose its key whatever fails), the gateways follow the
    file within a second, then every row that does not open with the new key is re-sealed in one transaction. A
    rotation that stopped half way (its old key still kept) is finished first."""
    from appliance.secretfile import RECHECK_S
    from appliance.secrets import secret_access

    kept = tenant.secrets_dir / f"{rotation.name}.previous"
    if kept.exists():
        rows, resealed = _reseal(tenant, kept.read_text().strip(), tenant.read_secret(rotation.name))
        kept.unlink()
        say(f"  finished an earlier rotation: {resealed} of {rows} stored secrets re-sealed")
    old = tenant.read_secret(rotation.name)
    new = generate(SecretKind.key32)
    mode, uid, gid = secret_access(tenant, rotation.name)
    write_atomic(kept, (old + "\n").encode(), mode, (uid, gid))
    write_secret(tenant, rotation.name, new)
    started = time.monotonic()
    time.sleep(RECHECK_S + 0.5)  # every gateway process seals with the new key from now on
    rows, resealed = _reseal(tenant, old, new)
    kept.unlink()
    say(f"  {resealed} of {rows} stored secrets re-sealed with the new key")
    return Outcome(rotation.name, [], time.monotonic() - started, {"rows": rows, "resealed": resealed})


def s3_keys(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """New key pairs (the audit shipper's and the backup's) on the store beside the old ones; the key files
    replaced and their readers restarted; then the old pairs taken off the store. Where the store is a vault
    host's, the pairs are staged for the deploy instead; on an external store the operator makes them."""
    from appliance.host.objectstore import apply_change, tenant_probe_ok, wait_for
    from appliance.objectstore import seaweed
    from appliance.objectstore.credentials import S3Credentials, new_access_key, new_secret_key, tenant_keys

    if host.objectstore_host:
        return _staged_for_vault(host, tenant, rotation, say)
    if not host.runs_objectstore:
        raise RotationError(
            f"{tenant.id}'s buckets are on an external store: make each new pair there (an identity allowed its "
            f"bucket only) and install it with `appliance tenant s3-keys {tenant.id} --pair audit|backup`")
    old = tenant_keys(tenant)
    new = {pair.component: S3Credentials(new_access_key(), new_secret_key()) for pair in S3_KEY_PAIRS}
    owner = host.objectstore_user
    apply_change(host, seaweed.ensure_tenant_identity(host, tenant, new, owner=owner, previous=old))
    wait_for(lambda: tenant_probe_ok(host, tenant, new))
    for pair in S3_KEY_PAIRS:
        # The secret before the access key: a reader seeing the new access key finds its secret already there.
        write_secret(tenant, pair.secret_key, new[pair.component].secret_key)
        write_secret(tenant, pair.access_key, new[pair.component].access_key)
    # The root-only copy a restore of a deleted tenant dir reads: the old pair is about to stop working.
    from appliance.backup.stanza import ensure_recovery_keys

    ensure_recovery_keys(tenant)
    started = time.monotonic()
    restarted = restart(host, tenant, rotation.restarts, say)
    changes = apply_change(host, seaweed.ensure_tenant_identity(host, tenant, new, owner=owner))
    say(f"  old key pairs removed from the store ({', '.join(changes) or 'no change'})")
    return Outcome(rotation.name, restarted, time.monotonic() - started)


def backup_cipher(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """A new repository generation under a new passphrase, its stanza and a full backup; the current one kept for
    restores until the new one holds the retention's full backups (appliance.backup.generations)."""
    from appliance.backup.errors import BackupError
    from appliance.backup.generations import rotate

    started = time.monotonic()
    try:
        rotated = rotate(host, tenant, say)
    except BackupError as exc:
        raise RotationError(str(exc)) from None
    return Outcome(rotation.name, [], time.monotonic() - started, rotated.as_dict())


def _staged_for_vault(host: HostConfig, tenant: TenantConfig, rotation: Rotation, say: Say) -> Outcome:
    """The tenant's store is on a vault host, which only the deploy reaches: new pairs staged here for the next
    deploy, which carries them there, switches to them and has the old ones refused (appliance.rotation.
    staged_keys). Nothing changes until then."""
    from appliance.rotation.staged_keys import stage

    _, new = stage(tenant)
    say(f"  {'new key pairs staged' if new else 'key pairs staged earlier kept'} for the vault host "
        f"{host.objectstore_host}; the next deploy (pyinfra -y <inventory> deploy.py) gives them to its store beside "
        f"the current ones, makes them current here (restarting {', '.join(rotation.restarts)}), then has the old "
        "ones refused. Until then the current ones stay in use.")
    return Outcome(rotation.name, [], 0.0, {"staged_for": host.objectstore_host})


PROCEDURES: dict[str, Callable[[HostConfig, TenantConfig, Rotation, Say], Outcome]] = {
    "db_password": db_password,
    "file": plain_file,
    "reencrypt": reencrypt,
    "s3_keys": s3_keys,
    "backup_cipher": backup_cipher,
}
