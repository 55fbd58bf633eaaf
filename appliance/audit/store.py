"""The audit bucket as the shipper and the verifier use it: locked PUTs that never replace, reads, listings.

    >>> s3 = audit_client(host, tenant)
    >>> outcome = put_batch(s3, tenant.audit_bucket, batch, retention_days=2555)
    >>> outcome.created, outcome.version_id

Every PUT carries Content-MD5 and x-amz-checksum-sha256 (the store refuses a body that does not match them),
Object Lock COMPLIANCE with an explicit retain-until date, the manifest as metadata, and `If-None-Match: *`, so
the shipper never adds a second version to a key: when the key exists (a PUT that was acknowledged before a
crash) the store answers 412 and the shipper compares what is there instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from appliance.audit.batch import CONTENT_TYPE, MANIFEST_METADATA_KEY, Batch, prefix
from appliance.config import AUDIT_S3_KEYS, HostConfig, TenantConfig
from appliance.objectstore.client import LOCK_MODE, S3Client, error_code, http_status, put_object, s3_client
from appliance.objectstore.credentials import tenant_credentials


class StoreError(RuntimeError):
    """The store could not be reached or refused a request; the message says which and never holds a secret."""


def audit_client(host: HostConfig, tenant: TenantConfig, *, timeout_s: float = 10.0, retries: int = 2) -> S3Client:
    """A client with the audit shipper's own keys (never the admin's: the shipper must not be able to bypass locks;
    never the backup's: only the shipper's identity may write the audit bucket)."""
    return s3_client(host, tenant_credentials(tenant, AUDIT_S3_KEYS), timeout_s=timeout_s, retries=retries)


def describe(exc: BaseException) -> str:
    """One line for logs and status: the store's error code or the connection failure, nothing else."""
    if isinstance(exc, ClientError):
        return f"{error_code(exc) or http_status(exc)} ({exc.operation_name})"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class PutOutcome:
    created: bool  # False: the key existed already (nothing was written)
    version_id: str | None
    retain_until: dt.datetime | None


def put_batch(client: S3Client, bucket: str, batch: Batch, retention_days: int,
              now: dt.datetime | None = None) -> PutOutcome:
    """PUT `batch` locked until now + `retention_days`, unless its key already exists (then created=False)."""
    retain_until = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(days=retention_days)
    # Whole seconds: S3 stores the date at second precision and answers it so; comparing later must agree.
    retain_until = retain_until.replace(microsecond=0) + dt.timedelta(seconds=1)
    try:
        response = put_object(
            client, bucket, batch.key, batch.body,
            ContentType=CONTENT_TYPE,
            Metadata={MANIFEST_METADATA_KEY: batch.manifest_header()},
            ObjectLockMode=LOCK_MODE,
            ObjectLockRetainUntilDate=retain_until,
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if http_status(exc) == 412 or error_code(exc) == "PreconditionFailed":
            return PutOutcome(False, None, None)
        raise StoreError(f"PUT {batch.key} refused: {describe(exc)}") from None
    except BotoCoreError as exc:
        raise StoreError(f"PUT {batch.key} failed: {describe(exc)}") from None
    return PutOutcome(True, response.get("VersionId"), retain_until)


@dataclass(frozen=True)
class StoredObject:
    key: str
    version_id: str | None
    body: bytes
    metadata: dict[str, str]
    lock_mode: str | None
    retain_until: dt.datetime | None
    last_modified: dt.datetime | None

    @property
    def manifest_text(self) -> str | None:
        return self.metadata.get(MANIFEST_METADATA_KEY)


def get_object(client: S3Client, bucket: str, key: str, version_id: str | None = None) -> StoredObject | None:
    """One object (a given version, or the current one); None when there is none (404 or a delete marker)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        response = client.get_object(**kwargs)
        body = response["Body"].read()
    except ClientError as exc:
        if http_status(exc) == 404 or error_code(exc) in ("NoSuchKey", "NoSuchVersion", "404"):
            return None
        raise StoreError(f"GET {key} refused: {describe(exc)}") from None
    except BotoCoreError as exc:
        raise StoreError(f"GET {key} failed: {describe(exc)}") from None
    return StoredObject(
        key=key, version_id=response.get("VersionId"), body=body,
        metadata={k.lower(): v for k, v in (response.get("Metadata") or {}).items()},
        lock_mode=response.get("ObjectLockMode"), retain_until=response.get("ObjectLockRetainUntilDate"),
        last_modified=response.get("LastModified"),
    )


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    last_modified: dt.datetime
    size: int
    is_latest: bool
    delete_marker: bool = False


@dataclass
class KeyVersions:
    """Every version and delete marker of one key, newest first (as S3 lists them)."""

    key: str
    entries: list[Version] = field(default_factory=list)

    @property
    def versions(self) -> list[Version]:
        return [v for v in self.entries if not v.delete_marker]

    @property
    def markers(self) -> list[Version]:
        return [v for v in self.entries if v.delete_marker]

    @property
    def hidden(self) -> bool:
        """The current version is a delete marker: a plain GET no longer finds the batch."""
        latest = [v for v in self.entries if v.is_latest]
        return bool(latest) and latest[0].delete_marker

    def original(self) -> Version | None:
        """The first version written (the oldest); on equal times the one S3 lists last (newest first)."""
        versions = self.versions
        if not versions:
            return None
        oldest = min(v.last_modified for v in versions)
        return [v for v in versions if v.last_modified == oldest][-1]


def list_versions(client: S3Client, bucket: str, key_prefix: str) -> Iterator[KeyVersions]:
    """Every key under `key_prefix` with all its versions and delete markers, in key order."""
    current: KeyVersions | None = None
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix, "MaxKeys": 1000}
    while True:
        try:
            page = client.list_object_versions(**kwargs)
        except ClientError as exc:
            raise StoreError(f"listing {bucket}/{key_prefix} refused: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"listing {bucket}/{key_prefix} failed: {describe(exc)}") from None
        entries = [
            Version(v["Key"], v.get("VersionId") or "null", v["LastModified"], int(v.get("Size", 0)),
                    bool(v.get("IsLatest")))
            for v in page.get("Versions", [])
        ] + [
            Version(m["Key"], m.get("VersionId") or "null", m["LastModified"], 0, bool(m.get("IsLatest")), True)
            for m in page.get("DeleteMarkers", [])
        ]
        # Versions and markers come in two lists; within a key S3 orders them newest first.
        entries.sort(key=lambda v: (v.key, -v.last_modified.timestamp()))
        for entry in entries:
            if current is None or entry.key != current.key:
                if current is not None:
                    yield current
                current = KeyVersions(entry.key)
            current.entries.append(entry)
        if not page.get("IsTruncated"):
            break
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        if page.get("NextVersionIdMarker"):
            kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]
        else:
            kwargs.pop("VersionIdMarker", None)
    if current is not None:
        yield current


def list_keys_after(client: S3Client, bucket: str, tenant_id: str, start_after: str | None) -> list[str]:
    """Current keys of the tenant's batches that sort after `start_after` (all of them when None)."""
    keys: list[str] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix(tenant_id), "MaxKeys": 1000}
    if start_after:
        kwargs["StartAfter"] = start_after
    while True:
        try:
            page = client.list_objects_v2(**kwargs)
        except ClientError as exc:
            raise StoreError(f"listing {bucket} refused: {describe(exc)}") from None
        except BotoCoreError as exc:
            raise StoreError(f"listing {bucket} failed: {describe(exc)}") from None
        keys.extend(item["Key"] for item in page.get("Contents", []))
        if not page.get("IsTruncated"):
            return keys
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
        kwargs.pop("StartAfter", None)
