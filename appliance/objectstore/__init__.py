"""S3 Object Lock storage for the audit trail and backups: the embedded SeaweedFS store and its clients.

- `tls`: the host CA and the store's certificates (S3 over HTTPS only, gRPC mutual TLS).
- `credentials`: the store's admin keys and each tenant's own S3 key pairs (the audit shipper's, the backup's).
- `seaweed`: the `weed mini` command line, security.toml, s3.json, and how a change is applied.
- `client`: boto3 clients that verify the store's CA and always send checksums.
- `buckets`: each tenant's COMPLIANCE-locked audit bucket and versioned backup bucket.
- `probe`: health of a tenant's buckets (each with the pair of the component that uses it) and of the store itself.
- `service`: the store's supervised process (`objectstore_service`).

Host-side functions are idempotent and report what they changed; the deploy decides what to restart.
"""
