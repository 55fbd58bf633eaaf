"""What needs the tenant's buckets: its audit shipper (once its audit bucket holds no foreign trail) and its
backups (its pgBackRest stanza in its own bucket, then the scheduler)."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import host_step
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName


@deploy("Tenant audit shipper and backups")
def tenant_audit_and_backup(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"Audit bucket of {tenant.id} holds only its own trail", config=config, tenant=tenant,
              step="audit-bucket-check", fact="audit_bucket_ours",
              current=f"{tenant.audit_bucket} holds no trail foreign to {tenant.id}'s database")
    host_step(name=f"pgBackRest stanza of {tenant.id}", config=config, tenant=tenant, step="backup-stanza",
              fact="backup_setup_ok", current=f"stanza of {tenant.id} exists, files current")
    # Both once their buckets are ready: started together, waited for once.
    install_components(config, manager, tenant, "audit", "backup")
