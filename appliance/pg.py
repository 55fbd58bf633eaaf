"""Synchronous psycopg connections to a tenant's Postgres cluster, as one of its roles, with the role's secret.

A leaf over the config model: host-side work (appliance/host/), the audit shipper and its checks
(appliance/audit/), backups and restores (appliance/backup/), `appliance status` and the CLI all connect
through here instead of through each other. The gateway's request path keeps its own async pool
(appliance/gateway/core/db.py); the sync engine connects with the DSN it is given on its command line.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from appliance.config import DB_SUPERUSER, TenantConfig


def connect(tenant: TenantConfig, role: str = DB_SUPERUSER, *, database: str | None = None,
            timeout: float = 5) -> psycopg.Connection[Any]:
    """An autocommit connection as `role` over the tenant's socket (superuser) or loopback (others), with the
    password read from the role's secret file."""
    info = tenant.pg_conninfo(role, database=database, via_socket=role == DB_SUPERUSER)
    return psycopg.connect(
        **info, password=tenant.read_secret(tenant.pg_password_secret(role)), connect_timeout=max(1, int(timeout)),
        autocommit=True,
    )


def dsn(tenant: TenantConfig, role: str) -> str:
    """A libpq connection string for `role` over loopback, password included, for code that takes a DSN (the
    sync engine's slot checks)."""
    return make_conninfo(**tenant.pg_conninfo(role), password=tenant.read_secret(tenant.pg_password_secret(role)))
