"""Host-side check of a tenant's audit bucket before its shipper starts: a trail this database never shipped.

A tenant id can be reused after `appliance tenant destroy`, but the destroyed tenant's trail stays locked in
`<id>-audit` (COMPLIANCE) until its retention ends. A new tenant's chain would start again at seq 1 next to
it; its shipper refuses that (a conflict it cannot resolve), so the deploy says so first, and plainly.
"""

from __future__ import annotations

import json

from appliance.audit.db import connect_audit, watermark
from appliance.audit.store import audit_client, get_object, list_keys_after
from appliance.config import HostConfig, TenantConfig


def foreign_trail(host: HostConfig, tenant: TenantConfig) -> str | None:
    """A message when the bucket holds batches this database neither shipped nor holds; None when fine."""
    with connect_audit(tenant) as conn:
        mark = watermark(conn)
        if mark.shipped_seq > 0:
            return None  # this database ships into the bucket: continuity is the shipper's (and verify's) job
        client = audit_client(host, tenant)
        keys = list_keys_after(client, tenant.audit_bucket, tenant.id, None)
        for key in keys:
            stored = get_object(client, tenant.audit_bucket, key)
            if stored is None or stored.manifest_text is None:
                continue
            manifest = json.loads(stored.manifest_text)
            row = conn.execute("SELECT hash FROM audit.events WHERE seq = %s", [manifest["last_seq"]]).fetchone()
            if row is not None and row[0] == manifest["last_hash"]:
                continue  # the database holds this batch's events (a restore): `recover` records it
            retain = f" (locked until {stored.retain_until:%Y-%m-%d})" if stored.retain_until else ""
            return (
                f"{tenant.audit_bucket} already holds an audit trail this tenant's database never wrote: {key}"
                f"{retain}. The id {tenant.id} belonged to an earlier tenant whose trail stays locked; deploy the "
                "new tenant under another id, or restore the earlier tenant (`appliance restore`)"
            )
    return None
