"""What a host and its tenants *are*, reported as JSON to the deploy's facts (never what to do)."""

from __future__ import annotations

from typing import Any

from appliance.config import HostConfig, TenantConfig
from appliance.host import postgres
from appliance.secrets import missing_secrets


def tenant_facts(tenant: TenantConfig) -> dict[str, Any]:
    missing = missing_secrets(tenant) if tenant.secrets_dir.is_dir() else ["*"]
    initialized = postgres.is_initialized(tenant)
    return {
        "secrets_missing": missing,
        "pg_initialized": initialized,
        "pg_roles_ok": bool(initialized and not missing and postgres.roles_ok(tenant)),
    }


def host_facts(host: HostConfig) -> dict[str, Any]:
    from appliance.supervision import Supervisor

    return {"supervisor_running": Supervisor().is_running()}
