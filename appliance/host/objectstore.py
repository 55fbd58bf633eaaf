"""Host-side work on the embedded object store: its files, tenant identities and buckets, and how a running
store picks up a change (SIGHUP for added identities, a restart for anything read only at start)."""

from __future__ import annotations

import hashlib
import subprocess
import time
from typing import Any

from appliance.config import S3_KEY_PAIRS, HostConfig, TenantConfig
from appliance.objectstore import seaweed
from appliance.objectstore.credentials import TenantKeys, admin_credentials
from appliance.objectstore.paths import store_paths
from appliance.objectstore.service import objectstore_service
from appliance.supervision import detect, manager


def apply_change(host: HostConfig, change: seaweed.Change) -> list[str]:
    """Make a running store pick up `change`; a store not running yet reads everything when it starts."""
    if not change:
        return []
    spec = objectstore_service(host)
    mgr = manager(detect(host.common.service_manager))
    state = mgr.states([spec])[spec.name]
    if not state.running or state.pid is None:
        return list(change.what)
    if change.restart:
        subprocess.run(mgr.restart_command(spec), check=True, capture_output=True)
        return [*change.what, "store restarted"]
    seaweed.reload_identities(state.pid)
    return [*change.what, "identities reloaded (SIGHUP)"]


def _extra_names(host: HostConfig) -> list[str]:
    """A vault host's certificate must also name the address and the name tenant hosts reach it by."""
    store = host.objectstore
    return [name for name in (store.bind_address, store.dns_name) if name and not store.loopback]


def setup(host: HostConfig) -> list[str]:
    """TLS, admin keys, JWT keys, security.toml, s3.json — created once, then only re-rendered."""
    return apply_change(
        host, seaweed.ensure_store_config(host, owner=host.objectstore_user, extra_names=_extra_names(host))
    )


def setup_ok(host: HostConfig) -> bool:
    """Every file the store needs exists and s3.json is what the current identities render to."""
    paths = store_paths(host)
    needed = [paths.server_cert, paths.server_key, paths.grpc_cert, paths.grpc_key, paths.jwt_keys,
              paths.security_toml, paths.s3_config, host.objectstore_admin_file, host.ca_cert]
    if not all(p.is_file() for p in needed):
        return False
    try:
        rendered = seaweed.render_s3_config(admin_credentials(host), seaweed.read_fragments(paths))
        return paths.s3_config.read_text() == rendered and paths.security_toml.read_text() == (
            seaweed.render_security_toml(host)
        )
    except (OSError, ValueError, KeyError):
        return False


def ensure_tenant(host: HostConfig, tenant: TenantConfig, keys: TenantKeys | None = None,
                  previous: TenantKeys | None = None) -> list[str]:
    """The tenant's identities on the store (one per key pair), then its buckets (created by the admin, with
    their locks).

    `keys` are given for a tenant of another host (its keys were relayed to this vault host); a tenant of this
    host has them in its secrets dir. `previous`: the pairs a rotation replaces, accepted beside `keys` until a
    call without them (appliance.rotation.staged_keys)."""
    from appliance.objectstore.buckets import ensure_tenant_buckets
    from appliance.objectstore.client import s3_client
    from appliance.objectstore.credentials import tenant_keys

    keys = keys or tenant_keys(tenant)
    changes = apply_change(host, seaweed.ensure_tenant_identity(host, tenant, keys, owner=host.objectstore_user,
                                                                previous=previous))
    admin = s3_client(host, admin_credentials(host))
    changes += wait_for(lambda: ensure_tenant_buckets(admin, tenant))
    if changes:
        wait_for(lambda: tenant_probe_ok(host, tenant, keys))
    return changes


def tenant_probe_ok(host: HostConfig, tenant: TenantConfig, keys: TenantKeys) -> list[str]:
    from appliance.objectstore.probe import probe_tenant

    result = probe_tenant(host, tenant, keys=keys)
    if not result.healthy:
        raise RuntimeError(result.detail)
    return []


def keys_digest(keys: TenantKeys, previous: TenantKeys | None = None) -> str:
    """What tenant host and vault compare to tell whether the vault holds the tenant's current keys: sha256 of
    the tenant's S3 key files, as they are on its host, in `S3_KEY_PAIRS` order ("<access>\n<secret>\n" each),
    which is what `cat` of the four files piped to sha256sum gives there. While new pairs are staged there
    (appliance.rotation.staged_keys), the staged files then the current ones: the vault holds them as its pairs
    and their previous ones."""
    text = "".join(f"{ring[pair.component].access_key}\n{ring[pair.component].secret_key}\n"
                   for ring in (keys, *((previous,) if previous else ())) for pair in S3_KEY_PAIRS)
    return hashlib.sha256(text.encode()).hexdigest()


def served_tenant_facts(host: HostConfig) -> dict[str, dict[str, Any]]:
    """For each tenant of another host this vault keeps: the digest of the keys it holds, and whether they
    reach the tenant's buckets. A tenant whose fragment is the legacy single identity has no digest: the tenant
    host's keys never match it, so the next deploy relays both pairs."""
    from appliance.objectstore.probe import probe_tenant

    fragments = {f["id"]: f for f in seaweed.read_fragments(store_paths(host))}
    facts: dict[str, dict[str, Any]] = {}
    for served in host.served_tenants:
        fragment = fragments.get(served.tenant.id)
        keys = seaweed.fragment_keys(fragment) if fragment else None
        if keys is None:
            facts[served.tenant.id] = {"keys_sha256": "", "ok": False}
            continue
        ok = probe_tenant(host, served.tenant, keys=keys).healthy
        previous = seaweed.fragment_keys(fragment, previous=True) if fragment else None
        facts[served.tenant.id] = {"keys_sha256": keys_digest(keys, previous), "ok": ok}
    return facts


def wait_for(step: Any, timeout: float = 30) -> list[str]:
    """Retry a step while a just-(re)started or just-reloaded store comes up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return list(step())
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def tenant_ok(host: HostConfig, tenant: TenantConfig) -> bool:
    """Both pairs reach their buckets; on the store's host also: the store keeps exactly the tenant's current pairs
    (a fragment of the legacy single identity, or a rotation left half done, means the deploy has work)."""
    from appliance.objectstore.credentials import tenant_keys
    from appliance.objectstore.probe import probe_tenant
    from appliance.rotation.staged_keys import staged

    if not all(tenant.secret_path(name).is_file() for pair in S3_KEY_PAIRS for name in pair.files):
        return False
    if not host.runs_objectstore and staged(tenant) is not None:
        return False  # staged pairs to make current once the vault answers them
    if host.runs_objectstore and not seaweed.tenant_fragment_current(host, tenant, tenant_keys(tenant)):
        return False
    return probe_tenant(host, tenant).healthy


def forget_tenant(host: HostConfig, tenant: TenantConfig) -> list[str]:
    """Revoke a destroyed tenant's identities, both pairs' (a restart: SIGHUP keeps removed identities alive).

    Its backup bucket is emptied only by retention; its audit bucket is locked COMPLIANCE and stays."""
    emptied = empty_bucket(host, tenant.backup_bucket)
    lines = [f"object store: no bucket {tenant.backup_bucket} (the tenant never got one)" if emptied is None
             else f"object store: emptied {tenant.backup_bucket} ({emptied} versions)"]
    changes = apply_change(host, seaweed.remove_tenant_identity(host, tenant.id, owner=host.objectstore_user))
    return lines + ([f"object store: {c}" for c in changes] or ["object store: no identity to revoke"])


def empty_bucket(host: HostConfig, bucket: str) -> int | None:
    """Delete every version and delete marker of an unlocked bucket (the backup bucket of a destroyed tenant:
    its repository is encrypted with a passphrase that is gone with the tenant, and a tenant created later
    under the same id must find an empty repository). Returns how many were deleted; None when there is no such
    bucket (a tenant whose first deploy failed before its buckets were made)."""
    from botocore.exceptions import ClientError

    from appliance.objectstore.client import s3_client

    admin = s3_client(host, admin_credentials(host))
    try:
        return _delete_versions(admin, bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return None
        raise


def _delete_versions(admin: Any, bucket: str) -> int:
    from appliance.objectstore.client import delete_objects

    deleted = 0
    for page in admin.get_paginator("list_object_versions").paginate(Bucket=bucket):
        deleted += delete_objects(admin, bucket, [{"Key": v["Key"], "VersionId": v["VersionId"]}
                                                  for v in page.get("Versions", []) + page.get("DeleteMarkers", [])])
    return deleted
