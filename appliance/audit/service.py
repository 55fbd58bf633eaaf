"""The shipper as a supervised service of the tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.services import ServiceSpec, venv_bin


def audit_service(tenant: TenantConfig, source_digest: str = "") -> ServiceSpec:
    """`appliance audit ship --tenant <id>` as the tenant's OS user. It has no port: `audit_status` is its
    probe. It reads host.json (endpoint, CA), the `audit` role's password and the tenant's S3 keys from their
    files, so nothing secret is on its command line or in its environment."""
    environment = {"APPLIANCE_CONFIG_DIR": str(tenant.common.config_dir)}
    if source_digest:
        # New appliance sources change the unit/program file, so the deploy restarts the shipper with them.
        environment["APPLIANCE_SOURCE_DIGEST"] = source_digest
    return ServiceSpec(
        name=f"appliance-{tenant.id}-audit",
        component="audit",
        command=(venv_bin(tenant, "appliance"), "audit", "ship", "--tenant", tenant.id),
        user=tenant.user,
        working_dir=tenant.root,
        log_file=tenant.log_file("audit"),
        port=None,
        probe="tcp",
        environment=environment,
        # Killing it at any point is safe (exactly-once does not depend on a clean stop); TERM just stops it
        # between steps so the log says so.
        stop_signal="TERM",
        stop_wait_s=20,
        tenant=tenant.id,
    )
