"""Least privilege inside a deployed tenant (issue 20): what each component's database role may not do, and what
`appliance status` says each component runs as."""

from __future__ import annotations

import os

import psycopg
import pytest

from appliance.config import DB_ROLES, LOGIN_ROLES, HostConfig
from tests.support.deployment import status_json

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


def test_status_says_which_os_user_each_component_runs_as(deployed: HostConfig) -> None:
    code, report = status_json()
    assert code == 0
    for tenant_id, data in report["tenants"].items():
        users = {name: c.get("user") for name, c in data["components"].items() if c.get("pid")}
        assert users and all(user == f"tenant-{tenant_id}" for user in users.values()), users
    assert report["host"]["components"]["frontdoor"]["user"] == deployed.frontdoor_user
