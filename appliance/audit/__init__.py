"""The tenant's audit trail, from the row in Postgres to the locked object in S3 and back.

- `canonical`: canonical JSON, the exact bytes that are hashed (the specification is its docstring).
- `chain`: appending events to the hash chain in the writer's transaction without forking it.
- `batch`: a shipped batch's key, gzip JSONL body and manifest, each a pure function of its rows (format spec).
- `store`: locked, checksummed, never-replacing PUTs; reads and version listings of the audit bucket.
- `db`: what the shipper, verify and status read and write in Postgres (as the `audit` role).
- `shipper`: `appliance audit ship`, exactly once across crashes and outages; `service`: its ServiceSpec.
- `verify` / `export`: prove the trail end to end and name the first break; hand events to auditors.
- `status`: the lag for `appliance status`; `operator`: deploy/restore/rotation/destroy events;
  `recover`: after a restore, re-import shipped events the database lost.
"""
