"""Against the real store, with the tenant's own keys (the ones the shipper holds): a shipped batch cannot be
deleted, replaced or unlocked early. What the keys CAN do — a delete marker, a later version on top — leaves
the shipped version intact and is named by verify (test_verify.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from appliance.audit.batch import prefix
from appliance.audit.store import list_versions
from appliance.objectstore.client import put_object
from tests.support.audit import AuditRig, audit_rig
from tests.support.objectstore import ObjectStore


@pytest.fixture(scope="module")
def shipped(store: ObjectStore) -> Iterator[tuple[AuditRig, str, str, bytes]]:
    with audit_rig(store, audit={"batch_max_events": 100}) as rig:
        rig.append(100)
        rig.ship_all()
        [versions] = list(list_versions(rig.s3(), rig.bucket, prefix(rig.tenant.id)))
        [version] = versions.versions
        body = rig.s3().get_object(Bucket=rig.bucket, Key=versions.key)["Body"].read()
        yield rig, versions.key, version.version_id, body


def _refused(call: object, **kwargs: object) -> str:
    with pytest.raises(ClientError) as exc:
        call(**kwargs)  # type: ignore[operator]
    return str(exc.value.response["Error"]["Code"])


def _intact(rig: AuditRig, key: str, version_id: str, body: bytes) -> None:
    got = rig.s3().get_object(Bucket=rig.bucket, Key=key, VersionId=version_id)
    assert got["Body"].read() == body
    assert got["ObjectLockMode"] == "COMPLIANCE"
    assert got["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)


def test_deleting_a_shipped_batch_version_is_refused(shipped: tuple[AuditRig, str, str, bytes]) -> None:
    rig, key, version_id, body = shipped
    s3 = rig.s3()
    assert _refused(s3.delete_object, Bucket=rig.bucket, Key=key, VersionId=version_id) == "AccessDenied"
    assert _refused(s3.delete_object, Bucket=rig.bucket, Key=key, VersionId=version_id,
                    BypassGovernanceRetention=True) == "AccessDenied"
    result = s3.delete_objects(Bucket=rig.bucket, Delete={"Objects": [{"Key": key, "VersionId": version_id}]})
    assert not result.get("Deleted") and result["Errors"][0]["Code"] == "AccessDenied"
    # Not even the store's admin can.
    assert _refused(rig.admin_s3().delete_object, Bucket=rig.bucket, Key=key, VersionId=version_id) == "AccessDenied"
    _intact(rig, key, version_id, body)


def test_overwriting_a_shipped_batch_is_refused_or_only_stacks_a_version(
        shipped: tuple[AuditRig, str, str, bytes]) -> None:
    rig, key, version_id, body = shipped
    s3 = rig.s3()
    # The shipper's own PUTs carry If-None-Match: * and are refused outright.
    with pytest.raises(ClientError) as exc:
        put_object(s3, rig.bucket, key, b"forged", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # Any other PUT or copy cannot change the shipped version: S3 adds a version above it.
    put_object(s3, rig.bucket, key, b"forged")
    s3.copy_object(Bucket=rig.bucket, Key=key, CopySource={"Bucket": rig.bucket, "Key": key,
                                                           "VersionId": version_id},
                   MetadataDirective="REPLACE", Metadata={"audit-manifest": "{}"})
    [versions] = [v for v in list_versions(s3, rig.bucket, key) if v.key == key]
    assert len(versions.versions) == 3 and versions.original() is not None
    assert versions.original().version_id == version_id  # type: ignore[union-attr]
    _intact(rig, key, version_id, body)
    report = rig.verify("s3")
    assert {(p.seq, p.kind) for p in report.problems} == {(1, "overwritten")}, report.summary()
    assert len(report.problems) == 2  # one per stacked version


def test_shortening_or_downgrading_a_shipped_batch_retention_is_refused(
        shipped: tuple[AuditRig, str, str, bytes]) -> None:
    rig, key, version_id, body = shipped
    s3 = rig.s3()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    for mode in ("COMPLIANCE", "GOVERNANCE"):
        assert _refused(s3.put_object_retention, Bucket=rig.bucket, Key=key, VersionId=version_id,
                        Retention={"Mode": mode, "RetainUntilDate": soon}) == "AccessDenied"
    assert _refused(s3.put_object_retention, Bucket=rig.bucket, Key=key, VersionId=version_id,
                    Retention={"Mode": "GOVERNANCE", "RetainUntilDate": soon},
                    BypassGovernanceRetention=True) == "AccessDenied"
    _intact(rig, key, version_id, body)


def test_the_tenant_keys_cannot_remove_the_lock_or_the_bucket(shipped: tuple[AuditRig, str, str, bytes]) -> None:
    rig, key, version_id, body = shipped
    s3 = rig.s3()
    assert _refused(s3.put_object_lock_configuration, Bucket=rig.bucket,
                    ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"}) == "AccessDenied"
    assert _refused(s3.put_bucket_versioning, Bucket=rig.bucket,
                    VersioningConfiguration={"Status": "Suspended"}) in ("AccessDenied", "InvalidBucketState")
    assert _refused(s3.delete_bucket, Bucket=rig.bucket) in ("AccessDenied", "BucketNotEmpty")
    _intact(rig, key, version_id, body)
