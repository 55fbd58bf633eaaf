"""What a host and its tenants *are*, reported as JSON to the deploy's facts (never what to do).

The deploy asks with `python -m appliance.host.facts` (appliance.install_steps.host_facts_command): the same
report as `appliance host facts` without the CLI's imports of every command (a third of a second).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from appliance.config import HostConfig, TenantConfig
from appliance.host import objectstore, postgres
from appliance.identity.issuer_secrets import issuer_secrets_ok
from appliance.secrets import missing_secrets


def report(host: HostConfig) -> dict[str, Any]:
    """The host's facts and each tenant's, as the deploy reads them.

    Mostly waiting (Postgres logins, S3 requests, pgBackRest, each a round trip or a process): each tenant's
    local checks run in a thread of their own beside one thread for everything that talks S3, which runs its
    requests in turn (boto3 makes clients from one shared session, which is not safe across threads)."""
    from appliance.host.firewall import firewall_current

    with ThreadPoolExecutor(max_workers=2 + len(host.tenants)) as pool:
        remote = pool.submit(_remote_facts, host)
        # The port rules are the host's (every tenant's users in one ruleset): rendered and compared once.
        firewall = pool.submit(firewall_current, host)
        local = {tenant.id: pool.submit(tenant_local_facts, host, tenant) for tenant in host.tenants}
        host_part, tenants_remote = remote.result()
        tenants = {tenant.id: {**local[tenant.id].result(), **tenants_remote[tenant.id]} for tenant in host.tenants}
        # The users step also brings the loaded port rules up to date with the users (appliance.host.firewall).
        rules_current = firewall.result()
        for facts in tenants.values():
            facts["users_ok"] = facts["users_ok"] and rules_current
        return {"host": host_part, "tenants": tenants}


def _remote_facts(host: HostConfig) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    return host_facts(host), {tenant.id: tenant_remote_facts(host, tenant) for tenant in host.tenants}


def _missing(tenant: TenantConfig) -> list[str]:
    return missing_secrets(tenant) if tenant.secrets_dir.is_dir() else ["*"]


def tenant_local_facts(host: HostConfig, tenant: TenantConfig) -> dict[str, Any]:
    """What the tenant's files, Postgres and pgBackRest say."""
    missing = _missing(tenant)
    initialized = postgres.is_initialized(tenant)
    from appliance.host.users import users_ok

    return {
        # And the host's port rules current: see report().
        "users_ok": users_ok(tenant),
        "secrets_missing": missing,
        "pg_initialized": initialized,
        "pg_roles_ok": bool(initialized and not missing and postgres.roles_ok(tenant)),
        "schema_current": bool(initialized and not missing and postgres.schema_current(tenant)),
        **_sync_facts(tenant, missing),
        **_backup_facts(host, tenant, missing),
        "identity_issuers_ok": bool(not missing and issuer_secrets_ok(tenant)),
    }


def tenant_remote_facts(host: HostConfig, tenant: TenantConfig) -> dict[str, Any]:
    """What the tenant's buckets say (S3)."""
    missing = _missing(tenant)
    return {
        "objectstore_ok": bool(not missing and objectstore.tenant_ok(host, tenant)),
        "audit_bucket_ours": bool(not missing and _audit_bucket_ours(host, tenant)),
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


if __name__ == "__main__":
    import os
    import sys

    from appliance.config import load_host_config

    sys.stdout.write(json.dumps(report(load_host_config()), sort_keys=True) + "\n")
    sys.stdout.flush()
    # Printed, its threads joined and its connections closed: the interpreter's teardown (collecting botocore's and
    # pydantic's objects) would add a tenth of a second to every deploy's wait for this report.
    os._exit(0)
