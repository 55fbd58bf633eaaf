"""Health probes for `appliance status`: a tenant's buckets, and the embedded store itself.

Probes never raise for a store that is down, refuses, or is misconfigured: they return a `ProbeResult` whose
`detail` says what an operator needs to know.

    >>> probe_tenant(host, tenant)
    ProbeResult(healthy=True, detail="acme-audit (COMPLIANCE 365 days) with the audit shipper's keys and ...")
"""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)

from appliance.config import AUDIT_S3_KEYS, S3_KEY_PAIRS, HostConfig, TenantConfig
from appliance.objectstore.buckets import default_retention, lock_configuration
from appliance.objectstore.client import LOCK_MODE, S3Client, ca_bundle, s3_client
from appliance.objectstore.credentials import TenantKeys, tenant_credentials

# The embedded store enforces locks in a process on the host it protects, so it cannot stand up to root
# there (see specs/object-lock-store.md): status output says so instead of implying a WORM guarantee.
EMBEDDED_CAVEAT = (
    "embedded store: Object Lock is enforced on this host, root here can still destroy the data; "
    "use a separate vault host or an external S3 with Object Lock for a WORM guarantee"
)
# A certificate closer than this to expiry makes the store unhealthy: a redeploy renews it at 30 days.
CERT_WARN_DAYS = 7


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    detail: str


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SSLError):
        return f"TLS failed (is the host CA trusted?): {exc}"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError, ReadTimeoutError)):
        return f"object store unreachable: {exc}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        code = error.get("Code") or status
        if str(code) in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"credentials refused ({code})"
        if str(code) in ("404", "NoSuchBucket", "NotFound"):
            return "bucket missing"
        return f"{code}: {error.get('Message') or status}"
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def probe_tenant(
    host: HostConfig, tenant: TenantConfig, *, timeout_s: float = 5.0, keys: TenantKeys | None = None
) -> ProbeResult:
    """Each bucket reachable with the key pair of the component that uses it (the audit shipper's, the backup's),
    and the audit bucket locked as configured.

    `keys` are the tenant's pairs when they do not live on this host (a vault host probing the identities it
    keeps for tenants of other hosts)."""
    where = host.s3_endpoint
    clients: dict[str, S3Client] = {}
    held: TenantKeys = {}
    for pair in S3_KEY_PAIRS:
        try:
            held[pair.component] = keys[pair.component] if keys is not None else tenant_credentials(tenant, pair)
            clients[pair.component] = s3_client(host, held[pair.component], timeout_s=timeout_s, retries=1)
        except (OSError, ValueError, KeyError) as exc:
            return ProbeResult(False, f"tenant {tenant.id}: {pair.component} S3 credentials unreadable: "
                                      f"{_describe(exc)}")
    for pair in S3_KEY_PAIRS:
        bucket = pair.bucket(tenant)
        try:
            clients[pair.component].head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError, OSError) as exc:
            return ProbeResult(False, f"{bucket} at {where} with the {pair.component} keys: {_describe(exc)}")
    try:
        config = lock_configuration(clients[AUDIT_S3_KEYS.component], tenant.audit_bucket)
    except (BotoCoreError, ClientError, OSError) as exc:
        return ProbeResult(False, f"{tenant.audit_bucket}: lock configuration unreadable: {_describe(exc)}")
    wanted = (LOCK_MODE, tenant.audit.retention_days)
    found = default_retention(config)
    if config is None or config.get("ObjectLockEnabled") != "Enabled":
        return ProbeResult(False, f"{tenant.audit_bucket}: Object Lock is not enabled")
    if found != wanted:
        shown = f"{found[0]} {found[1]} days" if found else "no default retention"
        return ProbeResult(
            False, f"{tenant.audit_bucket}: default retention is {shown}, expected COMPLIANCE "
            f"{tenant.audit.retention_days} days",
        )
    shared = ""
    if pairs_shared(held):
        # An external store's tenant upgraded from one identity (appliance.secrets.seed_backup_pair): healthy, but
        # the operator has a step left.
        shared = (f"; the backup still uses the audit shipper's identity: install its own with `appliance tenant "
                  f"s3-keys {tenant.id} --pair backup`")
    return ProbeResult(
        True,
        f"{tenant.audit_bucket} (COMPLIANCE {tenant.audit.retention_days} days) with the audit shipper's keys and "
        f"{tenant.backup_bucket} with the backup's reachable at {where}{shared}",
    )


def pairs_shared(keys: TenantKeys) -> bool:
    """Whether the audit shipper's and the backup's pairs are one and the same access key."""
    return len({keys[pair.component].access_key for pair in S3_KEY_PAIRS}) == 1


def _tls_context(host: HostConfig) -> ssl.SSLContext:
    bundle = ca_bundle(host)
    return ssl.create_default_context(cafile=bundle if isinstance(bundle, str) else None)


def _s3_answers(host: HostConfig, timeout_s: float) -> tuple[int, str, dict[str, Any]]:
    """An unsigned GET / over verified TLS: any S3 error document proves the S3 layer is up."""
    parts = urlsplit(host.s3_endpoint)
    conn = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, timeout=timeout_s, context=_tls_context(host)
    )
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read(4096).decode("utf-8", "replace")
        sock = conn.sock
        cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        return response.status, body, cert or {}
    finally:
        conn.close()


def probe_store(host: HostConfig, *, timeout_s: float = 5.0) -> ProbeResult:
    """The store answers S3 over TLS with a certificate the host CA verifies and that is not about to expire.

    For the embedded store the detail always carries `EMBEDDED_CAVEAT`.
    """
    where = host.s3_endpoint
    try:
        status, body, cert = _s3_answers(host, timeout_s)
    except ssl.SSLCertVerificationError as exc:
        return ProbeResult(False, f"object store at {where}: certificate not trusted: {exc.verify_message}")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(False, f"object store at {where} unreachable: {exc}")
    if "<Error>" not in body and not 200 <= status < 300:
        return ProbeResult(False, f"object store at {where}: not an S3 answer (HTTP {status})")
    parts = [f"object store at {where} answers S3 over TLS"]
    healthy = True
    not_after = cert.get("notAfter")
    if isinstance(not_after, str):
        expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
        days = (expires - dt.datetime.now(dt.UTC)).days
        parts.append(f"certificate valid {days} more days")
        if days < CERT_WARN_DAYS:
            healthy = False
            parts.append("renew it (redeploy)")
    if host.objectstore.mode == "embedded":
        parts.append(EMBEDDED_CAVEAT)
    return ProbeResult(healthy, "; ".join(parts))
