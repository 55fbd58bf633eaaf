"""The gateway's connection helper on asyncpg (appliance/gateway/core/db.py) against a real tenant database: a
rotated password is used by the next new connection, a connection left in a transaction or broken is never lent
again, and Postgres errors are answered with the statuses they had under psycopg."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from appliance.gateway.core.config import Settings
from appliance.gateway.core.db import APPLICATION_NAME, Database, DatabaseUnavailable
from appliance.gateway.core.errors import install_error_handlers
from appliance.secrets import write_private
from tests.gateway.conftest import database, gateway_backends
from tests.support.ports import free_port
from tests.support.stack import TenantEnv


def set_gateway_password(env: TenantEnv, password: str) -> None:
    with env.superuser() as conn:
        conn.execute(f"ALTER ROLE gateway PASSWORD '{password}'")


def replace_secret(path: Path, value: str) -> None:
    stat = path.stat()
    path.unlink()
    write_private(path, value, stat.st_uid, stat.st_gid)


def test_a_rotated_password_is_used_by_the_next_new_connection(env: TenantEnv) -> None:
    secret: Path = env.tenant.secret_path("db_gateway_password")
    original = secret.read_text().strip()

    async def scenario() -> None:
        db = database(env)
        try:
            async with db.connection() as held:
                assert await held.fetchval("SELECT current_user") == "gateway"
                rotated = f"rotated-{uuid.uuid4().hex}"
                set_gateway_password(env, rotated)
                replace_secret(secret, rotated)
                # A second connection is a new one (the first is lent): made with the password now in the file.
                async with db.connection() as fresh:
                    assert fresh is not held
                    assert await fresh.fetchval("SELECT current_setting('application_name')") == APPLICATION_NAME
                # The database no longer takes what the file said before: a new connection with it is refused.
                set_gateway_password(env, f"other-{uuid.uuid4().hex}")
                with pytest.raises(DatabaseUnavailable):
                    await db.dedicated()
        finally:
            await db.close()

    try:
        asyncio.run(scenario())
    finally:
        set_gateway_password(env, original)
        replace_secret(secret, original)


def test_a_connection_left_in_a_transaction_is_closed_not_lent_again(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env, size=1)
        try:
            async with db.connection() as conn:
                first = conn.get_server_pid()
                await conn.execute("BEGIN")
                await conn.execute("SELECT pg_advisory_xact_lock(42)")
            async with db.connection() as conn:
                assert conn.get_server_pid() != first
                assert not conn.is_in_transaction()
                # The lock went with the closed session: a fresh session takes it at once.
                assert await conn.fetchval("SELECT pg_try_advisory_lock(42)")
                await conn.execute("SELECT pg_advisory_unlock(42)")
                reused = conn.get_server_pid()
            async with db.connection() as conn:
                assert conn.get_server_pid() == reused  # an idle connection is lent again
        finally:
            await db.close()

    asyncio.run(scenario())


async def _hold(db: Database) -> None:
    async with db.connection() as conn:
        await conn.execute("SELECT pg_sleep(0.1)")


async def _burst_of_four(env: TenantEnv, db: Database) -> int:
    """Four connections at once; the backends there were before."""
    before = len(gateway_backends(env))
    await asyncio.gather(*(_hold(db) for _ in range(4)))
    assert len(gateway_backends(env)) - before == 4
    return before


def test_connections_a_burst_opened_close_when_idle_but_one_stays(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env, size=4, idle_s=0.5)
        try:
            before = await _burst_of_four(env, db)
            await asyncio.sleep(1.5)
            # The burst's extra backends are gone, one stays for the next request.
            assert len(gateway_backends(env)) - before == 1
            async with db.connection() as conn:
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_burst_s_connections_close_while_one_at_a_time_still_comes(env: TenantEnv) -> None:
    """The gateway's own sweeps ask for a connection every few seconds: that must not keep a burst's open."""

    async def scenario() -> None:
        db = database(env, size=4, idle_s=0.5)
        try:
            before = await _burst_of_four(env, db)
            # Two at a time for a while: two stay.
            for _ in range(15):
                await asyncio.gather(_hold(db), _hold(db))
            assert len(gateway_backends(env)) - before == 2
            # Then one at a time, with no pause longer than a period: one stays.
            for _ in range(20):
                await _hold(db)
            assert len(gateway_backends(env)) - before == 1
        finally:
            await db.close()

    asyncio.run(scenario())


def test_the_gateway_s_own_periodic_work_takes_turns_on_one_connection(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env, size=4)
        try:
            async def sweep() -> int:
                async with db.background() as conn:
                    await conn.execute("SELECT pg_sleep(0.05)")
                    return int(conn.get_server_pid())

            started = time.monotonic()
            sweeps = asyncio.gather(*(sweep() for _ in range(3)))
            await asyncio.sleep(0.01)
            asked = time.monotonic()
            async with db.connection() as conn:  # a request meanwhile is not held up by them
                assert await conn.fetchval("SELECT 1") == 1
            assert time.monotonic() - asked < 0.05
            backends = await sweeps
            assert len(set(backends)) == 1  # one after the other, on the same connection
            assert time.monotonic() - started >= 0.15
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_connection_whose_backend_died_is_replaced(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env, size=1)
        try:
            async with db.connection() as conn:
                victim = conn.get_server_pid()
            with env.superuser() as su:
                su.execute("SELECT pg_terminate_backend(%s)", (victim,))
            # asyncpg hears the connection close (its socket's end) and the pool drops it: the next request gets
            # a working connection, not the dead one.
            await asyncio.sleep(0.2)
            async with db.connection() as conn:
                assert conn.get_server_pid() != victim
                assert await conn.fetchval("SELECT 1") == 1
        finally:
            await db.close()

    asyncio.run(scenario())


def test_jsonb_goes_in_and_out_as_python_values(env: TenantEnv) -> None:
    async def scenario() -> None:
        db = database(env)
        try:
            value = {"a": [1, 2.5, None, True], "b": "ü"}
            assert await db.fetchval("SELECT $1::jsonb", value) == value
            assert await db.fetchval("SELECT $1::jsonb ->> 'b'", value) == "ü"
            assert await db.fetchval("SELECT '\"text\"'::jsonb") == "text"
        finally:
            await db.close()

    asyncio.run(scenario())


def _app(db: Database) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/{what}")
    async def fail(what: str) -> dict[str, Any]:
        async with db.connection() as conn:
            if what == "unique":
                await conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY)")
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.execute("INSERT INTO t VALUES (1)")
            elif what == "data":
                await conn.fetchval("SELECT 'not a number'::int")
            elif what == "check":
                await conn.execute("SELECT 1/0")
            elif what == "terminated":
                await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            elif what == "syntax":
                await conn.execute("SELEKT 1")
        return {}

    return app


@pytest.mark.parametrize(("what", "status", "code"), [
    ("unique", 409, "conflict"),            # psycopg's IntegrityError
    ("data", 400, "bad_request"),           # psycopg's DataError (invalid text representation)
    ("check", 400, "bad_request"),          # division by zero is class 22 too
    ("terminated", 503, "unavailable"),     # psycopg's OperationalError (admin shutdown)
    ("syntax", 500, "internal"),            # a programming error stays an internal one
])
def test_postgres_errors_answer_as_they_did(env: TenantEnv, what: str, status: int, code: str) -> None:
    async def scenario() -> httpx.Response:
        db = database(env)
        try:
            transport = httpx.ASGITransport(app=_app(db), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get(f"/{what}")
        finally:
            await db.close()

    response = asyncio.run(scenario())
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_an_unreachable_database_answers_503(env: TenantEnv) -> None:
    async def scenario() -> httpx.Response:
        conninfo = {**Settings.from_tenant(env.tenant).db_conninfo, "port": free_port()}
        db = Database(conninfo, lambda: "irrelevant", 1, connect_timeout=2)
        try:
            transport = httpx.ASGITransport(app=_app(db), raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.get("/nothing")
        finally:
            await db.close()

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "irrelevant" not in response.text


def test_a_connection_never_looks_in_home_for_a_client_certificate(env: TenantEnv,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """supervisord starts a tenant's gateway as the tenant's user with its own HOME (/root, which that user may
    not enter): asyncpg's look for $HOME/.postgresql/postgresql.crt then fails with EACCES and no connection is
    ever made. The gateway's connections are plain (loopback), so that look must not happen at all."""
    import asyncpg.connect_utils

    def looked(filename: str) -> None:
        raise PermissionError(13, "Permission denied", f"/root/.postgresql/{filename}")

    monkeypatch.setattr(asyncpg.connect_utils, "_dot_postgresql_path", looked)
    assert asyncio.run(_one_value(database(env))) == 42


async def _one_value(db: Database) -> Any:
    try:
        return await db.fetchval("SELECT 41 + 1")
    finally:
        await db.close()
