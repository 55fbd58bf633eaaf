"""boto3 clients for the tenant's object store: the right endpoint, the host CA, and checksums on every PUT.

    >>> s3 = s3_client(host, tenant_credentials(tenant, AUDIT_S3_KEYS))
    >>> put_object(s3, tenant.audit_bucket, "batches/000001.jsonl", body)
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from appliance.config import HostConfig
from appliance.objectstore.credentials import S3Credentials

# boto3 builds its clients at run time and ships no types; the alias names what the functions expect.
S3Client = Any


# The Object Lock mode of every locked object and bucket default: no one, the root account included, can shorten
# or remove it before it expires (specs/object-lock-store.md).
LOCK_MODE = "COMPLIANCE"


def error_code(exc: ClientError) -> str:
    """The S3 error code of a refused request ('' when the answer had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def ca_bundle(host: HostConfig) -> str | bool:
    """What clients verify the store's certificate with: the host CA for the embedded store, the operator's
    bundle (or the system CAs) for an external one. Never False: TLS is not optional."""
    if host.objectstore.mode == "embedded":
        return str(host.ca_cert)
    return host.objectstore.ca_file or True


def s3_client(
    host: HostConfig, creds: S3Credentials, *, timeout_s: float = 10.0, retries: int = 2
) -> S3Client:
    config = Config(
        # SeaweedFS (and MinIO by default) serve buckets by path; virtual-host style would need DNS.
        s3={"addressing_style": "path"},
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": retries, "mode": "standard"},
        # Checksums on every request that can carry one. SeaweedFS accepts PUTs without Content-MD5 on lock
        # buckets where AWS refuses them, so a client that relied on the default would pass tests here and
        # fail in production.
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
    )
    return boto3.client(
        "s3",
        endpoint_url=host.s3_endpoint,
        region_name=host.objectstore.region,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        verify=ca_bundle(host),
        config=config,
    )


def checksum_args(body: bytes) -> dict[str, str]:
    """Content-MD5 plus a SHA-256 checksum of `body`: AWS requires one of them on Object Lock PUTs and
    both are verified by the store, so a corrupted upload is refused rather than locked for years."""
    return {
        "ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        "ChecksumSHA256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
    }


def put_object(client: S3Client, bucket: str, key: str, body: bytes, **extra: Any) -> dict[str, Any]:
    """PutObject with both checksums; returns the response (VersionId, ETag, ...)."""
    result: dict[str, Any] = client.put_object(Bucket=bucket, Key=key, Body=body, **checksum_args(body), **extra)
    return result


def delete_objects(client: S3Client, bucket: str, objects: list[dict[str, str]]) -> int:
    """DeleteObjects in the API's batches of 1000 (`{"Key": ...}`, with `VersionId` for a version); how many.
    RuntimeError naming the first object the store refused."""
    for start in range(0, len(objects), 1000):
        chunk = objects[start:start + 1000]
        result = client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        if result.get("Errors"):
            first = result["Errors"][0]
            raise RuntimeError(f"{bucket}: {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
    return len(objects)
