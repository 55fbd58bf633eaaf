"""The shipper as a supervised service of the tenant (rendered by the deploy like every other ServiceSpec)."""

from __future__ import annotations

from appliance.config import TenantConfig
from appliance.servicespec import ServiceSpec, appliance_service


def audit_service(tenant: TenantConfig) -> ServiceSpec:
    """`appliance audit ship --tenant <id>` as the tenant's OS user. It has no port: `audit_status` is its
    probe. It reads host.json (endpoint, CA), the `audit` role's password and the tenant's S3 keys from their
    files, so nothing secret is on its command line or in its environment. Killing it at any point is safe
    (exactly-once does not depend on a clean stop); TERM just stops it between steps so the log says so."""
    return appliance_service(tenant, "audit", "ship", stop_wait_s=20)
