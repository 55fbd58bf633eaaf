"""Least privilege inside a deployed tenant (issue 20): what each component's database role may not do, and what
`appliance status` says each component runs as."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import psycopg
import pytest

from appliance.config import DB_ROLES, LOGIN_ROLES, S3_KEY_PAIRS, TENANT_SECRETS, HostConfig
from tests.support import isolation
from tests.support.deployment import status_json
from tests.support.isolation import _PROBE, as_user

pytestmark = [
    pytest.mark.deploy,
    pytest.mark.skipif(os.geteuid() != 0, reason="deploying to @local needs root"),
]


def test_the_agents_role_cannot_log_in_and_has_no_password_file(deployed: HostConfig) -> None:
    tenant = deployed.tenant("acme")
    assert "agents" in DB_ROLES and "agents" not in LOGIN_ROLES
    # Whatever password is tried (the one it had before this change included), the role does not log in.
    with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|not permitted to log in"):
        psycopg.connect(**tenant.pg_conninfo("agents"), password="anything", connect_timeout=5)
    with psycopg.connect(**tenant.pg_conninfo("postgres", via_socket=True),
                         password=tenant.read_secret("db_superuser_password")) as conn:
        row = conn.execute("SELECT rolcanlogin, rolpassword IS NULL FROM pg_authid WHERE rolname = 'agents'")
        assert row.fetchone() == (False, True)


def test_no_component_role_is_superuser_or_can_switch_off_the_audit_triggers(deployed: HostConfig) -> None:
    tenant = deployed.tenant("acme")
    for role in LOGIN_ROLES:
        with psycopg.connect(**tenant.pg_conninfo(role), password=tenant.read_secret(tenant.pg_password_secret(role)),
                             connect_timeout=5, autocommit=True) as conn:
            assert conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                                "WHERE rolname = current_user").fetchone() == (False, False, False)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("ALTER TABLE audit.events DISABLE TRIGGER events_insert_only")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SET session_replication_role = replica")


OWN = {"agents": "agent", "gateway": "gw", "sync": "sync", "streams": "strm", "identity": "idp", "audit": "audit"}


def test_status_says_which_os_user_each_component_runs_as(deployed: HostConfig) -> None:
    code, report = status_json()
    assert code == 0
    for tenant_id, data in report["tenants"].items():
        users = {name: c.get("user") for name, c in data["components"].items() if c.get("pid")}
        for component, suffix in OWN.items():
            assert users.pop(component) == f"t-{tenant_id}-{suffix}"
            # and it is who the process really is
            pid = data["components"][component]["pid"]
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
            assert pwd.getpwuid(uid).pw_name == f"t-{tenant_id}-{suffix}", component
        # The cluster's owner: Postgres and the backup.
        assert users == {"postgres": f"tenant-{tenant_id}", "backup": f"tenant-{tenant_id}"}, users
    assert report["host"]["components"]["frontdoor"]["user"] == deployed.frontdoor_user


# What each component opens (appliance.secrets.SECRET_READERS says it; written out here so a change to that table
# shows up as a failing test, not as a silently wider reach).
READS = {
    "gateway": {"db_gateway_password", "sync_secret", "agents_internal_token", "jwt_signing_key",
                "secrets_encryption_key", "identity_gateway_client_secret"},
    "sync": {"db_sync_password", "sync_secret"},
    "streams": set(),
    "identity": {"db_identity_password", "identity_jwks", "identity_cookie_keys", "identity_gateway_client_secret"},
    "audit": {"db_audit_password", "s3_access_key", "s3_secret_key"},
    "agents": {"agents_internal_token"},
}
# The backup (the tenant's user, Postgres's too) reads these and no other secret: the bundles carry the others sealed
# by root (appliance.backup.capsule); nobody else reads these.
BACKUP_ONLY = {"backup_s3_access_key", "backup_s3_secret_key", "backup_cipher_passphrase", "db_superuser_password"}


def test_the_backups_s3_pair_is_read_by_the_backup_only() -> None:
    assert {name for name in TENANT_SECRETS if name not in set().union(*READS.values())} == BACKUP_ONLY


def test_the_audit_shippers_s3_pair_cannot_touch_the_backup_bucket_nor_the_backups_the_audit_bucket(
    deployed: HostConfig,
) -> None:
    """Issue 20 on the deployed store: each pair reaches its own bucket only, and no tenant identity of the store
    is the single identity of before (on both buckets)."""
    import json

    from appliance.objectstore import seaweed
    from appliance.objectstore.paths import store_paths

    names = {i["name"] for i in json.loads(store_paths(deployed).s3_config.read_text())["identities"]}
    for tenant in deployed.tenants:
        isolation.s3_pairs_confined(deployed, tenant)
        assert seaweed.legacy_identity_name(tenant.id) not in names
        assert {seaweed.tenant_identity_name(tenant.id, pair) for pair in S3_KEY_PAIRS} <= names


def test_each_components_user_reads_its_own_secrets_and_no_other(deployed: HostConfig) -> None:
    tenant, other = deployed.tenant("acme"), deployed.tenant("globex")
    for component, reads in {**READS, "backup": BACKUP_ONLY}.items():
        who = tenant.os_user(component)
        for name in TENANT_SECRETS:
            result = as_user(who, "cat", str(tenant.secret_path(name)))
            if name in reads:
                assert result.returncode == 0, (component, name, result.stderr)
            else:
                assert result.returncode != 0 and "Permission denied" in result.stderr, (component, name)
            assert as_user(who, "cat", str(other.secret_path(name))).returncode != 0, (component, name)


def test_each_internal_port_answers_only_the_components_that_call_it(deployed: HostConfig) -> None:
    tenant, other = deployed.tenant("acme"), deployed.tenant("globex")
    callers = {"postgres": {"gateway", "sync", "audit", "identity"}, "sync": {"gateway"},
               "streams": {"gateway", "agents"}, "agents": {"gateway"}, "identity": {"gateway"}}
    for port_of, allowed in callers.items():
        for component in OWN:
            probe = as_user(tenant.os_user(component), "/usr/bin/python3", "-c", _PROBE, str(tenant.port(port_of)))
            wanted = "open" if component in allowed else "refused"
            assert probe.stdout.startswith(wanted), (component, port_of, probe.stdout, probe.stderr)
            probe = as_user(tenant.os_user(component), "/usr/bin/python3", "-c", _PROBE, str(other.port(port_of)))
            assert probe.stdout.startswith("refused"), ("globex", component, port_of, probe.stdout)


def test_the_gateways_user_reaches_nothing_else_of_its_tenant(deployed: HostConfig) -> None:
    """The gateway faces every caller: a hole in it must not hand over the cluster, the backups or the other
    components' data, nor the other tenant."""
    tenant, other = deployed.tenant("acme"), deployed.tenant("globex")
    who = tenant.gateway_user
    for path in (tenant.root, tenant.secrets_dir, tenant.pg_data.parent, tenant.streams_data, tenant.backup_dir,
                 tenant.agents_data, tenant.sync_data, tenant.identity_data, tenant.logs_dir, other.root):
        denied = as_user(who, "ls", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    _, report = status_json()
    for component in ("postgres", "sync", "streams", "agents"):
        pid = report["tenants"]["acme"]["components"][component]["pid"]
        denied = as_user(who, "kill", "-0", str(pid))
        assert denied.returncode != 0 and "Operation not permitted" in denied.stderr, component


def test_the_agents_user_reaches_its_token_and_the_streams_server_and_nothing_else(deployed: HostConfig) -> None:
    """What a handler plugin could try, as the agents' OS user: every other secret, the tenant's other data, its
    other ports (Postgres under any role), another component's process, the other tenant."""
    tenant, other = deployed.tenant("acme"), deployed.tenant("globex")
    who = tenant.agents_user
    assert as_user(who, "cat", str(tenant.secret_path("agents_internal_token"))).returncode == 0
    assert as_user(who, "ls", str(tenant.agents_data)).returncode == 0
    for name in TENANT_SECRETS:
        if name != "agents_internal_token":
            denied = as_user(who, "cat", str(tenant.secret_path(name)))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, name
    assert as_user(who, "cat", str(other.secret_path("agents_internal_token"))).returncode != 0
    for path in (tenant.root, tenant.secrets_dir, tenant.pg_data.parent, tenant.streams_data, tenant.backup_dir,
                 tenant.logs_dir, other.root):
        denied = as_user(who, "ls", str(path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
    assert as_user(who, "/usr/bin/python3", "-c", _PROBE, str(tenant.port("streams"))).stdout.startswith("open")
    for component in ("postgres", "sync", "identity", "agents"):
        probe = as_user(who, "/usr/bin/python3", "-c", _PROBE, str(tenant.port(component)))
        assert probe.stdout.startswith("refused"), (component, probe.stdout, probe.stderr)
    assert as_user(who, "/usr/bin/python3", "-c", _PROBE, str(other.port("streams"))).stdout.startswith("refused")
    # Signals to the tenant's other processes (and so ptrace, /proc/<pid>/environ) are refused.
    _, report = status_json()
    gateway = report["tenants"]["acme"]["components"]["gateway"]["pid"]
    denied = as_user(who, "kill", "-0", str(gateway))
    assert denied.returncode != 0 and "Operation not permitted" in denied.stderr
    assert as_user(who, "cat", f"/proc/{gateway}/environ").returncode != 0
