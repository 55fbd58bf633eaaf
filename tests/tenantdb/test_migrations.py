"""The tenant schema: versioned idempotent migrations, least privilege per role, insert-only audit, publication."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from appliance.pg import connect
from appliance.tenantdb import migrate as migrate_module
from appliance.tenantdb.migrate import MigrationError, ensure_publication, migrate, migrations
from appliance.tenantdb.schema import PRODUCT_TABLES, SYNCED_TABLES
from tests.support.pg import PgCluster
from tests.support.stack import TenantEnv, make_tenant, provision, remove_base, temp_base


@pytest.fixture(scope="module")
def env(pg_module: PgCluster) -> Iterator[TenantEnv]:
    base = temp_base()
    try:
        tenant_env = make_tenant(base, pg=pg_module)
        applied = provision(tenant_env)
        assert applied == [m.label for m in migrations()]
        yield tenant_env
    finally:
        remove_base(base)


def as_role(env: TenantEnv, role: str) -> psycopg.Connection[Any]:
    return connect(env.tenant, role)


def test_migrate_again_changes_nothing(env: TenantEnv) -> None:
    with env.superuser() as conn:
        assert migrate(conn) == []
        assert ensure_publication(conn, env.tenant.sync.publication) is False
        versions = [r[0] for r in conn.execute("SELECT version FROM appliance.schema_migrations ORDER BY 1")]
    assert versions == [m.version for m in migrations()]


def test_an_edited_applied_migration_is_refused(env: TenantEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    real = migrations()
    edited = [migrate_module.Migration(m.version, m.name, m.sql + "\n-- edited\n") if m.version == 1 else m
              for m in real]
    monkeypatch.setattr(migrate_module, "migrations", lambda: edited)
    with env.superuser() as conn, pytest.raises(MigrationError, match="0001_product was applied with different"):
        migrate(conn)


def test_the_deploy_finds_an_edited_migration_without_waiting_for_a_new_one(
        env: TenantEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.host.postgres import schema_current

    assert schema_current(env.tenant)
    edited = [migrate_module.Migration(m.version, m.name, m.sql + "\n-- edited\n") if m.version == 1 else m
              for m in migrations()]
    monkeypatch.setattr(migrate_module, "migrations", lambda: edited)
    # Not current, so the deploy runs `migrate`, which stops with the error naming it (above).
    assert not schema_current(env.tenant)


def test_migrate_needs_the_roles(pg: PgCluster) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as conn, pytest.raises(MigrationError, match="do not exist"):
        migrate(conn)


def test_concurrent_migrators_apply_each_migration_once(env: TenantEnv, pg_module: PgCluster) -> None:
    import threading

    with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE racing")
    errors: list[BaseException] = []
    results: list[list[str]] = []

    def run() -> None:
        try:
            with psycopg.connect(pg_module.conninfo(dbname="racing"), autocommit=True) as conn:
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        applied = sorted(label for result in results for label in result)
        assert applied == sorted(m.label for m in migrations())
    finally:
        with psycopg.connect(pg_module.dsn, autocommit=True) as conn:
            conn.execute("DROP DATABASE racing WITH (FORCE)")


def test_synced_tables_have_house_id_deleted_at_and_the_shape_columns(env: TenantEnv) -> None:
    with env.superuser() as conn:
        for table in PRODUCT_TABLES:
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s", [table])}
            assert "deleted_at" in columns, table
            if table in SYNCED_TABLES:
                assert "house_id" in columns, table
                assert set(SYNCED_TABLES[table]) <= columns, table
                identity = conn.execute("SELECT relreplident FROM pg_class WHERE oid = %s::regclass",
                                        [f"public.{table}"]).fetchone()
                assert identity == ("f",), table


def test_publication_publishes_exactly_the_synced_tables(env: TenantEnv) -> None:
    name = env.tenant.sync.publication
    with env.superuser() as conn:
        published = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [name])}
        assert published == set(SYNCED_TABLES)
        conn.execute(f"ALTER PUBLICATION {name} ADD TABLE public.secrets")
        assert ensure_publication(conn, name) is True
        published = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [name])}
        assert published == set(SYNCED_TABLES)
        conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
        with pytest.raises(MigrationError, match="ALL TABLES"):
            ensure_publication(conn, "everything")
        conn.execute("DROP PUBLICATION everything")


def _privileges(conn: psycopg.Connection[Any], role: str, table: str) -> set[str]:
    return {p for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
            if conn.execute("SELECT has_table_privilege(%s, %s, %s)", [role, table, p]).fetchone() == (True,)}


def test_each_role_has_least_privilege(env: TenantEnv) -> None:
    with env.superuser() as conn:
        for table in PRODUCT_TABLES:
            assert _privileges(conn, "gateway", f"public.{table}") == {"SELECT", "INSERT", "UPDATE"}, table
            expected_sync = {"SELECT"} if table in SYNCED_TABLES else set()
            assert _privileges(conn, "sync", f"public.{table}") == expected_sync, table
            expected_agents = {"SELECT"} if table in ("agents", "threads", "configs") else set()
            assert _privileges(conn, "agents", f"public.{table}") == expected_agents, table
            assert _privileges(conn, "audit", f"public.{table}") == set(), table
        assert _privileges(conn, "gateway", "audit.events") == {"INSERT"}
        assert _privileges(conn, "gateway", "audit.chain_head") == set()
        assert _privileges(conn, "audit", "audit.events") == {"SELECT"}
        assert _privileges(conn, "audit", "audit.shipped") == {"SELECT", "UPDATE"}
        for role in ("sync", "agents"):
            assert _privileges(conn, role, "audit.events") == set()
            assert _privileges(conn, role, "appliance.outbox") == set()
        # DELETE only to prune finished activations (0007_outbox_prune); entries and product rows are never deleted.
        assert _privileges(conn, "gateway", "appliance.outbox") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
        assert _privileges(conn, "gateway", "appliance.thread_entries") == {"SELECT", "INSERT", "UPDATE"}


def test_no_role_can_delete_rows(env: TenantEnv) -> None:
    with as_role(env, "gateway") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM public.houses")
    with as_role(env, "audit") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM audit.events")


def _one_event(env: TenantEnv) -> int:
    from appliance.audit.chain import AuditEvent, append_event

    with env.superuser() as conn:
        seq, _ = append_event(conn, AuditEvent("test", "test.event", None, "x", {"n": 1}))
    return seq


@pytest.mark.parametrize("statement", [
    "UPDATE audit.events SET actor = 'someone else' WHERE seq = {seq}",
    "DELETE FROM audit.events WHERE seq = {seq}",
    "TRUNCATE audit.events",
])
def test_audit_events_refuse_changes_even_for_the_owner(env: TenantEnv, statement: str) -> None:
    seq = _one_event(env)
    with env.superuser() as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="insert-only"):
            conn.execute(statement.format(seq=seq))
        # A session pretending to be a replica silences ordinary triggers, not these.
        conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="insert-only"):
            conn.execute(statement.format(seq=seq))


def test_an_event_that_does_not_follow_the_head_is_refused(env: TenantEnv) -> None:
    seq = _one_event(env)
    with as_role(env, "gateway") as conn:
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="does not follow the chain head"):
            conn.execute(
                "INSERT INTO audit.events (seq, ts, actor, action, detail, prev_hash, hash) "
                "VALUES (%s, now(), 'x', 'forged', '{}', repeat('0', 64), repeat('1', 64))",
                [seq + 5],
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE audit.chain_head SET seq = 0")


def test_sql_files_are_shipped_with_the_package() -> None:
    folder = Path(migrate_module.__file__).parent / "migrations"
    assert sorted(p.name for p in folder.glob("*.sql")) == [f"{m.label}.sql" for m in migrations()]
