"""The tenant's backups: its pgBackRest stanza in its own bucket (once the bucket exists), then the scheduler
(a supervised service under either manager)."""

from __future__ import annotations

from pyinfra.api import deploy

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import host_step
from appliance.deploys.services import install_components
from appliance.supervision import ManagerName


@deploy("Tenant audit shipper")
def tenant_audit(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"Audit bucket of {tenant.id} holds only its own trail", config=config, tenant=tenant,
              step="audit-bucket-check", fact="audit_bucket_ours",
              current=f"{tenant.audit_bucket} holds no trail foreign to {tenant.id}'s database")
    install_components(config, manager, tenant, "audit")


@deploy("Tenant backups")
def tenant_backup(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"pgBackRest stanza of {tenant.id}", config=config, tenant=tenant, step="backup-stanza",
              fact="backup_setup_ok", current=f"stanza of {tenant.id} exists, files current")
    install_components(config, manager, tenant, "backup")
