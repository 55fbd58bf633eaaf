"""Isolation between two tenants of one deployed host, as an attacker on the host would try it: each check
takes the attacker's tenant and the victim's, so every tenant (whichever tool deployed it) passes the same ones.
Each also proves the refusal is about ownership: the attacker's own resource answers it."""

from __future__ import annotations

import stat
import subprocess
import uuid

import psycopg
import pytest

from appliance.config import LOGIN_ROLES, S3_KEY_PAIRS, HostConfig, S3KeyPair, TenantConfig


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=30)


def cannot_read_directory(attacker: TenantConfig, victim: TenantConfig) -> None:
    # 0710: the victim's own group (its agents' user) may pass through, the attacker is not in it.
    assert stat.S_IMODE(victim.root.stat().st_mode) == 0o710
    denied = as_user(attacker.user, "ls", str(victim.root))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = as_user(attacker.user, "cat", str(victim.secret_path("db_gateway_password")))
    assert denied.returncode != 0
    assert as_user(attacker.user, "ls", str(attacker.root)).returncode == 0


def database_credentials_refused(attacker: TenantConfig, victim: TenantConfig) -> None:
    for role in LOGIN_ROLES:
        info = victim.pg_conninfo(role)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**info, password=attacker.read_secret(attacker.pg_password_secret(role)),
                            connect_timeout=5)
        psycopg.connect(**info, password=victim.read_secret(victim.pg_password_secret(role)),
                        connect_timeout=5).close()


_PROBE = (
    "import socket,sys\n"
    "try:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close(); print('open')\n"
    "except OSError as e:\n print('refused', e)\n"
)


def private_ports_refused(attacker: TenantConfig, victim: TenantConfig) -> None:
    """The victim's private ports refuse every user of the attacker's (its own gateway, which calls all of its
    own, reaches them: the refusal is the owner rule, not a server that is down)."""
    for component in ("postgres", "streams", "sync", "identity"):
        for who in (attacker.user, attacker.gateway_user):
            theirs = as_user(who, "/usr/bin/python3", "-c", _PROBE, str(victim.port(component)))
            assert theirs.stdout.startswith("refused"), (who, component, theirs.stdout, theirs.stderr)
        own = as_user(attacker.gateway_user, "/usr/bin/python3", "-c", _PROBE, str(attacker.port(component)))
        assert own.stdout.startswith("open"), (component, own.stdout, own.stderr)


def tenant_s3(host: HostConfig, tenant: TenantConfig, pair: S3KeyPair):  # type: ignore[no-untyped-def]
    from appliance.objectstore.client import s3_client
    from appliance.objectstore.credentials import tenant_credentials

    return s3_client(host, tenant_credentials(tenant, pair), retries=1)


def _s3_refused(client, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """`client` can neither list, read nor write `bucket` (403 each)."""
    from botocore.exceptions import ClientError

    from appliance.objectstore.client import put_object

    with pytest.raises(ClientError) as denied:
        client.list_objects_v2(Bucket=bucket)
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as denied:
        client.get_object(Bucket=bucket, Key="anything")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as denied:
        # With checksums, as every writer here sends them: the refusal is the identity's, not a missing digest.
        put_object(client, bucket, f"intruder-{uuid.uuid4().hex}", b"x")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def s3_keys_refused(host: HostConfig, attacker: TenantConfig, victim: TenantConfig) -> None:
    """Neither of the attacker's pairs reaches either of the victim's buckets; each reaches its own."""
    for pair in S3_KEY_PAIRS:
        attacker_s3 = tenant_s3(host, attacker, pair)
        for bucket in (victim.audit_bucket, victim.backup_bucket):
            _s3_refused(attacker_s3, bucket)
        attacker_s3.list_objects_v2(Bucket=pair.bucket(attacker))


def s3_pairs_confined(host: HostConfig, tenant: TenantConfig) -> None:
    """Inside one tenant (issue 20): the audit shipper's pair cannot list, read or write the backup bucket, the
    backup's cannot touch the audit bucket; each lists its own."""
    for pair in S3_KEY_PAIRS:
        client = tenant_s3(host, tenant, pair)
        client.list_objects_v2(Bucket=pair.bucket(tenant))
        for other in S3_KEY_PAIRS:
            if other != pair:
                _s3_refused(client, other.bucket(tenant))


def isolated(host: HostConfig, attacker: TenantConfig, victim: TenantConfig) -> None:
    """Every check above, one way round."""
    cannot_read_directory(attacker, victim)
    database_credentials_refused(attacker, victim)
    if host.common.port_firewall:
        private_ports_refused(attacker, victim)
    s3_keys_refused(host, attacker, victim)
