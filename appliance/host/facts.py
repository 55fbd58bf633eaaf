"""What a host and its tenants *are*, reported as JSON to the deploy's facts (never what to do)."""

from __future__ import annotations

from typing import Any

from appliance.config import HostConfig, TenantConfig
from appliance.host import objectstore, postgres
from appliance.identity.issuer_secrets import issuer_secrets_ok
from appliance.secrets import missing_secrets


def tenant_facts(host: HostConfig, tenant: TenantConfig) -> dict[str, Any]:
    missing = missing_secrets(tenant) if tenant.secrets_dir.is_dir() else ["*"]
    initialized = postgres.is_initialized(tenant)
    return {
        "secrets_missing": missing,
        "pg_initialized": initialized,
        "pg_roles_ok": bool(initialized and not missing and postgres.roles_ok(tenant)),
        "schema_current": bool(initialized and not missing and postgres.schema_current(tenant)),
        "objectstore_ok": bool(not missing and objectstore.tenant_ok(host, tenant)),
        **_sync_facts(tenant, missing),
        **_backup_facts(host, tenant, missing),
        "audit_bucket_ours": bool(not missing and _audit_bucket_ours(host, tenant)),
        "identity_issuers_ok": bool(not missing and issuer_secrets_ok(tenant)),
    }


def _audit_bucket_ours(host: HostConfig, tenant: TenantConfig) -> bool:
    from appliance.host.audit import foreign_trail

    try:
        return foreign_trail(host, tenant) is None
    except Exception:  # no schema or store yet: the step runs and reports precisely
        return False


def _backup_facts(host: HostConfig, tenant: TenantConfig, missing: list[str]) -> dict[str, Any]:
    from appliance.backup.stanza import files_ok, stanza_ok

    if missing:
        return {"backup_files_ok": False, "backup_setup_ok": False}
    current = files_ok(host, tenant)
    # The stanza check asks pgBackRest (S3): only worth it when the files are in place.
    return {"backup_files_ok": current, "backup_setup_ok": current and stanza_ok(tenant)}


def _sync_facts(tenant: TenantConfig, missing: list[str]) -> dict[str, Any]:
    from appliance.config import SyncRuntime

    if tenant.sync.runtime is not SyncRuntime.electric:
        return {}
    from appliance.sync.container import container_ok

    return {"sync_container_ok": bool(not missing and container_ok(tenant))}


def host_facts(host: HostConfig) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if host.runs_frontdoor:
        from appliance.frontdoor.tls import frontdoor_tls_ok

        try:
            facts["frontdoor_tls_ok"] = frontdoor_tls_ok(host)
        except OSError:  # its user or directories not made yet: the step runs and says what it did
            facts["frontdoor_tls_ok"] = False
    else:
        from appliance.frontdoor.host import frontdoor_present

        facts["frontdoor_absent"] = not frontdoor_present(host)
    if host.runs_objectstore:
        facts["objectstore_setup_ok"] = objectstore.setup_ok(host)
        facts["served_tenants"] = objectstore.served_tenant_facts(host)
    return facts
