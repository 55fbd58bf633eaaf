"""S3 key pairs staged for a vault host: rotating the keys of a tenant whose buckets are on another host's store.

A tenant host cannot change the vault's store itself, and the deploy is what carries keys between the two
(appliance.deploys.objectstore). So `appliance secret rotate <tenant> s3_keys` there writes the new pairs beside
the current ones (`<key file>.next`, the owners and mode of the file they will replace) and the next deploy:
1. on the vault: relays both, and the store accepts the new pairs beside the current ones;
2. on the tenant host: once the vault answers the new pairs, makes them current and restarts their readers (the
   audit shipper, the backup), each healthy before the next;
3. on the vault again, after every tenant host passed step 2: relays the current pairs alone, and the store
   refuses the old ones from then on.
Until that deploy nothing changes: the current pairs keep working.
"""

from __future__ import annotations

from pathlib import Path

from appliance.config import S3_KEY_PAIRS, HostConfig, TenantConfig
from appliance.objectstore.credentials import S3Credentials, TenantKeys, new_access_key, new_secret_key
from appliance.restarts import Say

SUFFIX = ".next"
# Where the Ansible playbook's record of a tenant's keys (action_plugins) carries its staged pairs.
STAGED = "staged"


def staged_path(tenant: TenantConfig, name: str) -> Path:
    path = tenant.secret_path(name)
    return path.with_name(path.name + SUFFIX)


def staged_paths(tenant: TenantConfig) -> tuple[Path, ...]:
    """Every staged key file, in the order `keys_digest` hashes the pairs."""
    return tuple(staged_path(tenant, name) for pair in S3_KEY_PAIRS for name in pair.files)


def staged(tenant: TenantConfig) -> TenantKeys | None:
    """The staged pairs; None unless every one of their files is there."""
    if not all(path.is_file() for path in staged_paths(tenant)):
        return None
    return {pair.component: S3Credentials(staged_path(tenant, pair.access_key).read_text().strip(),
                                          staged_path(tenant, pair.secret_key).read_text().strip())
            for pair in S3_KEY_PAIRS}


def stage(tenant: TenantConfig) -> tuple[TenantKeys, bool]:
    """New pairs staged (the ones already staged when there are: the vault may hold them already); (pairs,
    whether new ones were written)."""
    from appliance.objectstore.files import write_atomic
    from appliance.secrets import secret_access

    found = staged(tenant)
    if found is not None:
        return found, False
    keys = {pair.component: S3Credentials(new_access_key(), new_secret_key()) for pair in S3_KEY_PAIRS}
    for pair in S3_KEY_PAIRS:
        for name, value in ((pair.secret_key, keys[pair.component].secret_key),
                            (pair.access_key, keys[pair.component].access_key)):
            mode, uid, gid = secret_access(tenant, name)
            write_atomic(staged_path(tenant, name), f"{value}\n".encode(), mode, (uid, gid))
    return keys, True


def promote(host: HostConfig, tenant: TenantConfig, say: Say) -> list[str]:
    """Make the staged pairs current once the store answers them, then restart their readers; what was done ([]:
    nothing staged, or the store does not answer them yet, which is said)."""
    from appliance.backup.stanza import ensure_recovery_keys
    from appliance.objectstore.probe import probe_tenant
    from appliance.restarts import restart_components
    from appliance.rotation.steps import write_secret

    keys = staged(tenant)
    if keys is None:
        return []
    answer = probe_tenant(host, tenant, keys=keys)
    if not answer.healthy:
        say(f"{tenant.id}: staged S3 keys not used yet, the store does not answer them ({answer.detail}); the "
            "current ones stay")
        return []
    for pair in S3_KEY_PAIRS:
        # The secret before the access key: a reader seeing the new access key finds its secret already there.
        write_secret(tenant, pair.secret_key, keys[pair.component].secret_key)
        write_secret(tenant, pair.access_key, keys[pair.component].access_key)
    for path in staged_paths(tenant):
        path.unlink(missing_ok=True)
    # The root-only copy a restore of a deleted tenant dir reads: the old pair is about to stop working.
    ensure_recovery_keys(tenant)
    restarted = restart_components(host, tenant, tuple(pair.component for pair in S3_KEY_PAIRS), say)
    return [f"staged S3 keys of {tenant.id} made current; restarted {', '.join(restarted) or 'nothing'}"]
