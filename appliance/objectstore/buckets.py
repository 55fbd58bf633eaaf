"""Each tenant's two buckets, ensured with the store's admin identity.

- `<id>-audit`: created with Object Lock (which turns versioning on for good) and a default retention of
  COMPLIANCE for `audit.retention_days`, so every shipped batch is immutable for that long, for everyone.
- `<id>-backup`: versioned (pgBackRest rewrites backup.info/archive.info in place) and without a default
  lock, so pgBackRest can still expire old backups.

    >>> changes = ensure_tenant_buckets(s3_client(host, admin_credentials(host)), tenant)
    >>> changes  # e.g. ["created acme-audit with Object Lock", "acme-audit: default retention ..."]

A second call with nothing changed returns []. A bucket that exists with the wrong shape and cannot be fixed
in place (an audit bucket without Object Lock, a backup bucket with a default lock) raises
`BucketConfigError` naming it, instead of being recreated: it may hold data.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from appliance.config import TenantConfig
from appliance.objectstore.client import LOCK_MODE, S3Client, error_code, http_status


class BucketConfigError(RuntimeError):
    """A bucket exists in a shape the appliance cannot use and must not silently replace."""


def bucket_exists(client: S3Client, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def _create(client: S3Client, bucket: str, region: str, **extra: Any) -> bool:
    """Create `bucket`; False if it already existed (another deploy may have raced us to it)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, **extra}
    # us-east-1 is the one region that must not be named in CreateBucketConfiguration.
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


def lock_configuration(client: S3Client, bucket: str) -> dict[str, Any] | None:
    """The bucket's ObjectLockConfiguration, or None if Object Lock is not enabled on it."""
    try:
        response = client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        # A missing bucket is a 404 too, but NoSuchBucket: that one is an error, not "no lock".
        if error_code(exc) in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
            return None
        raise
    config: dict[str, Any] = response.get("ObjectLockConfiguration") or {}
    return config or None


def default_retention(config: dict[str, Any] | None) -> tuple[str, int] | None:
    """(mode, days) of a lock configuration's default rule; years are counted as 365 days."""
    rule = ((config or {}).get("Rule") or {}).get("DefaultRetention") or {}
    if not rule:
        return None
    days = int(rule.get("Days") or 0) or int(rule.get("Years") or 0) * 365
    return str(rule.get("Mode", "")), days


def ensure_audit_bucket(client: S3Client, bucket: str, retention_days: int, region: str) -> list[str]:
    changes: list[str] = []
    if not bucket_exists(client, bucket) and _create(client, bucket, region, ObjectLockEnabledForBucket=True):
        changes.append(f"created {bucket} with Object Lock")
    config = lock_configuration(client, bucket)
    if config is None or config.get("ObjectLockEnabled") != "Enabled":
        raise BucketConfigError(
            f"bucket {bucket} exists without Object Lock; the audit trail needs a bucket created with it "
            "(move its contents and remove it, or pick another tenant id)"
        )
    wanted = (LOCK_MODE, retention_days)
    if default_retention(config) != wanted:
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": LOCK_MODE, "Days": retention_days}},
            },
        )
        # Only new objects take the new default; versions already locked keep their own retain-until date.
        changes.append(f"{bucket}: default retention {LOCK_MODE} {retention_days} days")
    return changes


def ensure_backup_bucket(client: S3Client, bucket: str, region: str) -> list[str]:
    changes: list[str] = []
    if not bucket_exists(client, bucket) and _create(client, bucket, region):
        changes.append(f"created {bucket}")
    if client.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        changes.append(f"{bucket}: versioning enabled")
    if default_retention(lock_configuration(client, bucket)) is not None:
        raise BucketConfigError(
            f"bucket {bucket} has a default Object Lock retention; pgBackRest could not expire its backups"
        )
    return changes


def ensure_tenant_buckets(client: S3Client, tenant: TenantConfig) -> list[str]:
    """Ensure both buckets of `tenant` with an admin client; returns what changed ([] when nothing did)."""
    region = tenant.objectstore.region
    return ensure_audit_bucket(client, tenant.audit_bucket, tenant.audit.retention_days, region) + (
        ensure_backup_bucket(client, tenant.backup_bucket, region)
    )
