"""The tenant's backups: its pgBackRest stanza in its own bucket (once the bucket exists), then the scheduler
(a supervised service; systemd timers on systemd hosts)."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server

from appliance.config import HostConfig, TenantConfig
from appliance.deploys.facts import host_step
from appliance.deploys.managed import managed_file
from appliance.deploys.services import install_services
from appliance.services import tenant_services
from appliance.supervision import ManagerName


@deploy("Tenant audit shipper")
def tenant_audit(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"Audit bucket of {tenant.id} holds only its own trail", config=config, tenant=tenant,
              step="audit-bucket-check", fact="audit_bucket_ours",
              current=f"{tenant.audit_bucket} holds no trail foreign to {tenant.id}'s database")
    specs = [s for s in tenant_services(tenant, config.source_digest) if s.component == "audit"]
    install_services(config, manager, specs, tenant=tenant.id)


@deploy("Tenant backups")
def tenant_backup(config: HostConfig, tenant: TenantConfig, manager: ManagerName) -> None:
    host_step(name=f"pgBackRest stanza of {tenant.id}", config=config, tenant=tenant, step="backup-stanza",
              fact="backup_setup_ok", current=f"stanza of {tenant.id} exists, files current")
    if manager == "systemd":
        from appliance.backup.schedule import backup_timer_units

        units = [
            managed_file(f"Backup unit {name}", f"/etc/systemd/system/{name}", content, mode="644")
            for name, content in backup_timer_units(tenant).items()
        ]
        timers = " ".join(name for name in backup_timer_units(tenant) if name.endswith(".timer"))
        server.shell(
            name=f"Enable the backup timers of {tenant.id}",
            commands=[f"systemctl daemon-reload && systemctl enable --now {timers}"],
            _if=lambda: any(op.did_change() for op in units),
        )
        return
    specs = [s for s in tenant_services(tenant, config.source_digest) if s.component == "backup"]
    install_services(config, manager, specs, tenant=tenant.id)
