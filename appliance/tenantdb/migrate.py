"""Versioned schema migrations for a tenant's database, and the publication the sync engine reads.

The deploy calls, as the tenant's superuser on the tenant's database, after the roles exist
(`appliance.host.postgres.ensure_roles`):

    with connect(tenant, "postgres") as conn:          # appliance.pg.connect, autocommit
        applied = migrate(conn)                        # ["0001_product", ...] or [] when up to date
        changed = ensure_publication(conn, tenant.sync.publication)

Migrations are `migrations/NNNN_name.sql`, applied in order, each in one transaction together with its row in
`appliance.schema_migrations`, under an advisory lock so two deploys never apply the same one twice. An applied
migration is never edited: its checksum is recorded, and a mismatch stops `migrate` with an error naming it.
Privileges (GRANTs) are part of the migrations.

Dependency direction: builds on the config model (the roles) and on `appliance.tenantdb.schema` (which tables are
synced, a fact the gateway's shape route reads too); the gateway's runtime never imports this module.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import psycopg
from psycopg import sql

from appliance.config import DB_ROLES
from appliance.tenantdb.schema import SYNCED_TABLES

# One lock for every migrator of a database (arbitrary constant: "appliance.migrate" as ASCII-ish digits).
MIGRATION_LOCK: Final = 0x6170706C6D696772
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database cannot be brought to the package's schema; the message says why and what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The package's migrations, in version order."""
    found: list[Migration] = []
    for entry in resources.files("appliance.tenantdb").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


def _bootstrap(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute("CREATE SCHEMA IF NOT EXISTS appliance")
        conn.execute("REVOKE ALL ON SCHEMA appliance FROM PUBLIC")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS appliance.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )


def _check_roles(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(DB_ROLES)]).fetchall()
    missing = sorted(set(DB_ROLES) - {r[0] for r in rows})
    if missing:
        raise MigrationError(f"database roles {missing} do not exist: run ensure_roles before migrate")


def applied_migrations(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of what the database has applied ({} before the first migrate)."""
    exists = conn.execute("SELECT to_regclass('appliance.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM appliance.schema_migrations").fetchall()
    return {int(r[0]): (r[1], r[2]) for r in rows}


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply every migration the database lacks; returns their labels (empty when nothing changed).

    `conn` is an autocommit connection as the database owner (the tenant's superuser). Safe to run again and
    concurrently."""
    if not conn.autocommit:
        raise MigrationError("migrate needs an autocommit connection (each migration is its own transaction)")
    _check_roles(conn)
    _bootstrap(conn)
    applied: list[str] = []
    for migration in migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
            row = conn.execute(
                "SELECT name, checksum FROM appliance.schema_migrations WHERE version = %s", [migration.version]
            ).fetchone()
            if row is not None:
                if row[1] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.label} was applied with different contents (checksum {row[1][:12]}…,"
                        f" package has {migration.checksum[:12]}…): applied migrations must never be edited; "
                        "add a new migration instead"
                    )
                continue
            conn.execute(migration.sql)  # type: ignore[arg-type]  # trusted SQL shipped in the package
            conn.execute(
                "INSERT INTO appliance.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                [migration.version, migration.name, migration.checksum],
            )
            applied.append(migration.label)
    return applied


def ensure_publication(conn: psycopg.Connection[Any], name: str) -> bool:
    """Make publication `name` publish exactly the synced tables (inserts, updates, deletes, truncates).

    Returns True when it created or changed the publication. Run as the tenant's superuser after `migrate`.
    A FOR ALL TABLES publication of that name is refused (it would publish secrets and API key hashes)."""
    wanted = {("public", table) for table in SYNCED_TABLES}
    changed = False
    with conn.transaction():
        # The same lock the sync engine takes around its own publication checks (appliance/sync/replication.py).
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"appliance.sync:{name}"])
        row = conn.execute(
            "SELECT oid, puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate "
            "FROM pg_publication WHERE pubname = %s",
            [name],
        ).fetchone()
        tables = sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in sorted(wanted))
        if row is None:
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), tables))
            return True
        if row[1]:
            raise MigrationError(
                f"publication {name} publishes ALL TABLES, secrets and api_keys included; drop it and deploy again"
            )
        current = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", [name]
            ).fetchall()
        }
        if current != wanted:
            conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), tables))
            changed = True
        if not row[2]:
            conn.execute(
                sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')").format(
                    sql.Identifier(name)
                )
            )
            changed = True
    return changed
