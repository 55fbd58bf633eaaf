"""Host-side work on a tenant's Postgres cluster: initdb, roles and database, config reloads, probes.

Runs on the tenant's host as root (called by the deploy through `appliance host ...`); every function is
idempotent and returns what it changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from appliance.config import DB_ROLES, DB_SUPERUSER, LOGIN_ROLES, TenantConfig
from appliance.pg import connect

SCRAM_ITERATIONS = 4096


def is_initialized(tenant: TenantConfig) -> bool:
    return (tenant.pg_data / "PG_VERSION").is_file()


def initdb(tenant: TenantConfig) -> bool:
    """Create the tenant's cluster as the tenant's OS user; False when it already exists."""
    if is_initialized(tenant):
        return False
    user = pwd.getpwnam(tenant.user)
    tenant.pg_data.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(tenant.pg_data, user.pw_uid, user.pw_gid)
    subprocess.run(
        [
            str(tenant.pg_bin("initdb")), "-D", str(tenant.pg_data), "-U", DB_SUPERUSER,
            "--auth=scram-sha-256", f"--pwfile={tenant.secret_path('db_superuser_password')}",
            "--encoding=UTF8", "--locale=C.UTF-8",
            # Page checksums let pg_amcheck and backup verification catch corrupted pages.
            "--data-checksums",
        ],
        check=True, capture_output=True, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
        cwd=tenant.root,
    )
    return True


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores, computed here so the password itself never reaches the
    server (nor its logs, should a statement ever be logged)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def roles_ok(tenant: TenantConfig) -> bool:
    """Every login role logs in with its current secret, the application database exists, and the roles that
    must not log in cannot."""
    nologin = [role for role in DB_ROLES if role not in LOGIN_ROLES]
    try:
        for role in LOGIN_ROLES:
            with connect(tenant, role, timeout=3):
                pass
        with connect(tenant, database="postgres", timeout=3) as conn:
            return conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin",
                                [nologin]).fetchone() == (0,)
    except (psycopg.Error, OSError):
        return False


def ensure_roles(tenant: TenantConfig) -> list[str]:
    """Create missing roles and the database; reset a role's password when it no longer matches its secret."""
    changed: list[str] = []
    with connect(tenant, database="postgres") as conn:
        existing = {row[0] for row in conn.execute("select rolname from pg_roles")}
        for role, attrs in DB_ROLES.items():
            if not attrs["login"]:
                changed.extend(_without_login(conn, role, role in existing))
                continue
            password = tenant.read_secret(tenant.pg_password_secret(role))
            options = sql.SQL("LOGIN REPLICATION" if attrs["replication"] else "LOGIN NOREPLICATION")
            if role not in existing:
                conn.execute(
                    sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                        sql.Identifier(role), options, sql.Literal(scram_verifier(password))
                    )
                )
                changed.append(f"role {role}")
                continue
            if not _password_matches(tenant, role, password):
                conn.execute(
                    sql.SQL("ALTER ROLE {} {} PASSWORD {}").format(
                        sql.Identifier(role), options, sql.Literal(scram_verifier(password))
                    )
                )
                changed.append(f"password of {role}")
        database = tenant.postgres.database
        if conn.execute("select 1 from pg_database where datname = %s", [database]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            changed.append(f"database {database}")
        # Nobody but the roles of this tenant may connect; PUBLIC connect is revoked from every database.
        for db in (database, "postgres", "template1"):
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        conn.execute(
            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.SQL(", ").join(sql.Identifier(r) for r in DB_ROLES)
            )
        )
    return changed


def _without_login(conn: psycopg.Connection[Any], role: str, exists: bool) -> list[str]:
    """A role that holds grants but never logs in: NOLOGIN and no password (one deployed with both loses them)."""
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        return [f"role {role} (no login)"]
    row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    if row and row[0]:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))
        return [f"role {role} can no longer log in"]
    return []


def _password_matches(tenant: TenantConfig, role: str, password: str) -> bool:
    info = tenant.pg_conninfo(role, database="postgres")
    try:
        with psycopg.connect(**info, password=password, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def schema_current(tenant: TenantConfig) -> bool:
    """Every packaged migration is applied, as packaged (same checksum: an edited one is found at the next deploy,
    which then stops with `migrate`'s error naming it), and the sync publication covers exactly the synced tables."""
    from appliance.tenantdb.migrate import applied_migrations, migrations
    from appliance.tenantdb.schema import SYNCED_TABLES

    try:
        with connect(tenant, timeout=3) as conn:
            applied = applied_migrations(conn)
            published = {
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                    [tenant.sync.publication],
                )
            }
    except (psycopg.Error, OSError):
        return False
    packaged = all(applied.get(m.version) == (m.name, m.checksum) for m in migrations())
    return packaged and published == {("public", t) for t in SYNCED_TABLES}


def ensure_schema(tenant: TenantConfig) -> list[str]:
    """Apply the tenant's pending migrations and make the sync publication cover the synced tables."""
    from appliance.tenantdb.migrate import ensure_publication, migrate

    with connect(tenant) as conn:
        changes = [f"migration {label}" for label in migrate(conn)]
        if ensure_publication(conn, tenant.sync.publication):
            changes.append(f"publication {tenant.sync.publication}")
    return changes


def postmaster_pid(tenant: TenantConfig) -> int | None:
    try:
        return int((tenant.pg_data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def reload(tenant: TenantConfig) -> bool:
    """Apply changed config files: SIGHUP, then report whether a setting still needs a restart."""
    pid = postmaster_pid(tenant)
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    # The postmaster applies the reload asynchronously; pending_restart shows only after it has re-read.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with connect(tenant, database="postgres") as conn:
                pending = conn.execute("select count(*) from pg_settings where pending_restart").fetchone()
                # A setting that needs a restart shows up here as "could not be applied"; anything else is an
                # error in the file itself.
                conf_ok = conn.execute(
                    "select count(*) from pg_file_settings "
                    "where error is not null and error <> 'setting could not be applied'"
                ).fetchone()
        except psycopg.Error:
            continue
        if conf_ok and conf_ok[0]:
            raise RuntimeError(f"postgresql.conf of tenant {tenant.id} has errors; see {tenant.log_file('postgres')}")
        return bool(pending and pending[0])
    return True


def probe(tenant: TenantConfig) -> tuple[bool, str]:
    """A real probe: `select 1` as the superuser over the tenant's socket."""
    try:
        with connect(tenant, database="postgres", timeout=3) as conn:
            version = conn.execute("select 1, current_setting('server_version')").fetchone()
        return True, f"select 1 ok (postgres {version[1] if version else '?'})"
    except (psycopg.Error, OSError) as exc:
        return False, f"select 1 failed: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def data_dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
