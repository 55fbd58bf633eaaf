"""Change capture against a real Postgres 15: what the stream delivers, when the slot may move, what breaks it."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from appliance.sync import pgoutput
from appliance.sync.lsn import parse_lsn
from appliance.sync.replication import (
    Change,
    ReplicationError,
    ReplicationSetupError,
    ReplicationStream,
    SlotLostError,
    Transaction,
    ensure_publication_and_slot,
    slot_health,
)
from tests.support.pg import PgCluster, restart

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
_names = itertools.count()


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def query_one(dsn: str, statement: str, params: Any = None) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()
    assert row is not None
    return row


def slot_positions(dsn: str, slot: str) -> tuple[int, int]:
    restart_lsn, confirmed = query_one(
        dsn,
        "SELECT restart_lsn::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        [slot],
    )
    return parse_lsn(restart_lsn), parse_lsn(confirmed)


async def next_txn(stream: ReplicationStream, timeout: float = 10) -> Transaction:
    return await asyncio.wait_for(anext(stream), timeout)


async def take(stream: ReplicationStream, timeout: float = 10) -> Transaction:
    """The next transaction, confirmed at once, as the engine does after storing it."""
    txn = await next_txn(stream, timeout)
    stream.confirm(txn.end_lsn)
    return txn


async def nothing_within(stream: ReplicationStream, seconds: float) -> bool:
    # A cancelled wait leaves the queue as it was, so a later next_txn still gets what arrives after.
    try:
        await asyncio.wait_for(anext(stream), seconds)
    except TimeoutError:
        return True
    return False


async def eventually(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.1)


@dataclass
class Capture:
    dsn: str
    slot: str
    publication: str
    table: str

    def stream(self, **options: Any) -> ReplicationStream:
        options.setdefault("reconnect_delay", (0.05, 0.5))
        return ReplicationStream(self.dsn, slot=self.slot, publication=self.publication, **options)


@contextmanager
def capture(pg: PgCluster, columns: str = "id int primary key, name text") -> Iterator[Capture]:
    """A fresh table, published, with a slot of its own; the slot is dropped afterwards."""
    n = next(_names)
    cap = Capture(dsn=pg.conninfo(), slot=f"slot_{n}", publication=f"pub_{n}", table=f"items_{n}")
    execute(cap.dsn, f"CREATE TABLE {cap.table} ({columns})")
    ensure_publication_and_slot(cap.dsn, cap.publication, cap.slot, [("public", cap.table)])
    try:
        yield cap
    finally:
        with psycopg.connect(cap.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                [cap.slot],
            )
            for _ in range(50):
                try:
                    conn.execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                        [cap.slot],
                    )
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.1)


def rows(txn: Transaction) -> list[tuple[str, dict[str, str | None] | None, dict[str, str | None] | None]]:
    return [(change.kind, change.old, change.new) for change in txn.changes]


# --- setup -------------------------------------------------------------------------------------------------------


def test_setup_is_idempotent_and_reports_each_change(pg_module):
    dsn = pg_module.conninfo()
    execute(dsn, "CREATE TABLE setup_a (id int primary key)", "CREATE TABLE setup_b (id int primary key)")

    first = ensure_publication_and_slot(dsn, "pub_setup", "slot_setup", [("public", "setup_a")])
    assert first.publication_created and first.slot_created and not first.slot_recreated
    assert first.tables_added == (("public", "setup_a"),)
    assert first.replica_identity_full_set == (("public", "setup_a"),)

    again = ensure_publication_and_slot(dsn, "pub_setup", "slot_setup", [("public", "setup_a")])
    assert not again.changed

    more = ensure_publication_and_slot(dsn, "pub_setup", "slot_setup", [("public", "setup_a"), ("public", "setup_b")])
    assert more.tables_added == (("public", "setup_b"),) and not more.publication_created and not more.slot_created

    published = query_one(
        dsn,
        "SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'pub_setup'",
    )[0]
    assert published == ["setup_a", "setup_b"]
    identities = query_one(
        dsn, "SELECT array_agg(relreplident::text) FROM pg_class WHERE relname IN ('setup_a', 'setup_b')"
    )[0]
    assert identities == ["f", "f"]

    with pytest.raises(ReplicationSetupError, match="does not exist"):
        ensure_publication_and_slot(dsn, "pub_setup", "slot_setup", [("public", "no_such_table")])

    health = slot_health(dsn, "slot_setup")
    assert health.exists and health.wal_status == "reserved" and not health.active
    assert health.retained_wal_bytes is not None and health.confirmed_flush_lag_bytes is not None
    assert slot_health(dsn, "no_such_slot") == (False, None, None, None, False)
    execute(dsn, "SELECT pg_drop_replication_slot('slot_setup')")


def test_setup_refuses_a_slot_of_another_plugin(pg_module):
    dsn = pg_module.conninfo()
    execute(
        dsn,
        "CREATE TABLE setup_c (id int primary key)",
        "SELECT pg_create_logical_replication_slot('slot_test_decoding', 'test_decoding')",
    )
    try:
        with pytest.raises(ReplicationSetupError, match="pgoutput"):
            ensure_publication_and_slot(dsn, "pub_c", "slot_test_decoding", [("public", "setup_c")])
    finally:
        execute(dsn, "SELECT pg_drop_replication_slot('slot_test_decoding')")


# --- what is delivered -------------------------------------------------------------------------------------------


def test_multi_statement_transaction_arrives_whole_with_its_xid_and_commit_lsn(pg_module):
    with capture(
        pg_module, "id int primary key, name text, score float8, at timestamptz, raw bytea, span interval, tags text[]"
    ) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                with psycopg.connect(cap.dsn) as conn:
                    conn.execute(
                        f"INSERT INTO {cap.table} VALUES (1, 'one', 0.1, '2024-10-09 12:00:00+02',"
                        " '\\x00ff', '1 day 2 hours', '{a,\"b c\"}')"
                    )
                    conn.execute(f"INSERT INTO {cap.table} (id) VALUES (2)")
                    conn.execute(f"UPDATE {cap.table} SET name = 'uno' WHERE id = 1")
                    conn.execute(f"DELETE FROM {cap.table} WHERE id = 2")
                    xid = int(conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()[0])
                    before_commit = parse_lsn(conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])
                    conn.commit()
                    after_commit = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])

                txn = await next_txn(stream)
                assert txn.xid == xid
                assert before_commit <= txn.commit_lsn < txn.end_lsn <= after_commit
                assert abs(time.time() - txn.commit_ts.timestamp()) < 60

                row_1 = {
                    "id": "1",
                    "name": "one",
                    "score": "0.1",
                    "at": "2024-10-09 10:00:00+00",
                    "raw": "\\x00ff",
                    "span": "P1DT2H",
                    "tags": '{a,"b c"}',
                }
                row_2 = {"id": "2", "name": None, "score": None, "at": None, "raw": None, "span": None, "tags": None}
                assert rows(txn) == [
                    ("insert", None, row_1),
                    ("insert", None, row_2),
                    ("update", row_1, {**row_1, "name": "uno"}),
                    ("delete", row_2, None),
                ]
                relation = txn.changes[0].relation
                assert (relation.schema, relation.table, relation.primary_key) == ("public", cap.table, ("id",))
                assert [(c.name, c.type_name) for c in relation.columns] == [
                    ("id", "int4"),
                    ("name", "text"),
                    ("score", "float8"),
                    ("at", "timestamptz"),
                    ("raw", "bytea"),
                    ("span", "interval"),
                    ("tags", "_text"),
                ]
                assert relation.replica_identity == "f"

        run(scenario())


def test_unchanged_toast_values_are_filled_from_the_old_row(pg_module):
    with capture(pg_module, "id int primary key, name text, body text") as cap:
        execute(cap.dsn, f"SELECT pg_create_logical_replication_slot('{cap.slot}_raw', 'pgoutput')")
        # Random hex does not compress below the TOAST threshold, so the value is stored out of line.
        big = query_one(cap.dsn, "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3000)")[0]
        execute(
            cap.dsn,
            f"INSERT INTO {cap.table} VALUES (1, 'a', '{big}')",
            f"UPDATE {cap.table} SET name = 'b' WHERE id = 1",
        )

        # What Postgres really sent for the update: the TOASTed column as 'unchanged'.
        with psycopg.connect(cap.dsn, autocommit=True) as conn:
            raw = [
                pgoutput.decode_message(bytes(data))
                for (data,) in conn.execute(
                    "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL,"
                    " 'proto_version', '1', 'publication_names', %s)",
                    [f"{cap.slot}_raw", cap.publication],
                )
            ]
            conn.execute("SELECT pg_drop_replication_slot(%s)", [f"{cap.slot}_raw"])
        update = next(m for m in raw if isinstance(m, pgoutput.Update))
        assert update.new == ("1", "b", pgoutput.UNCHANGED_TOAST)
        assert update.old == ("1", "a", big)

        async def scenario() -> None:
            async with cap.stream() as stream:
                insert, change = await next_txn(stream), await next_txn(stream)
                assert insert.changes[0].new == {"id": "1", "name": "a", "body": big}
                assert rows(change) == [
                    ("update", {"id": "1", "name": "a", "body": big}, {"id": "1", "name": "b", "body": big})
                ]

        run(scenario())


def test_truncate_is_delivered_for_each_table(pg_module):
    with capture(pg_module) as cap:
        execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')", f"TRUNCATE {cap.table}")

        async def scenario() -> None:
            async with cap.stream() as stream:
                await take(stream)
                truncate = await take(stream)
                assert [(c.kind, c.relation.table) for c in truncate.changes] == [("truncate", cap.table)]

        run(scenario())


def test_schema_change_is_surfaced_before_the_first_row_in_the_new_shape(pg_module):
    with capture(pg_module) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                first = await next_txn(stream)
                assert [c.kind for c in first.changes] == ["insert"]
                stream.confirm(first.end_lsn)

                execute(
                    cap.dsn,
                    f"ALTER TABLE {cap.table} ADD COLUMN note varchar(20)",
                    f"INSERT INTO {cap.table} VALUES (2, 'b', 'hi')",
                )
                after = await next_txn(stream)
                schema, insert = after.changes
                assert schema.kind == "schema"
                assert schema.previous_relation is not None
                assert schema.previous_relation.column_names == ("id", "name")
                assert schema.relation.column_names == ("id", "name", "note")
                assert (schema.relation.columns[2].type_name, schema.relation.columns[2].type_modifier) == (
                    "varchar",
                    24,
                )
                assert insert == Change("insert", schema.relation, new={"id": "2", "name": "b", "note": "hi"})
                stream.confirm(after.end_lsn)

                # Same definition sent again (a new connection resends every Relation): not a schema change.
                execute(
                    cap.dsn,
                    f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{cap.slot}'",
                )
                await eventually(lambda: stream.reconnects >= 1, what="reconnect")
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (3, 'c', NULL)")
                again = await next_txn(stream)
                assert [c.kind for c in again.changes] == ["insert"]

        run(scenario())


def test_only_published_tables_are_delivered(pg_module):
    with capture(pg_module) as cap:
        execute(
            cap.dsn,
            f"CREATE TABLE {cap.table}_private (id int)",
            f"INSERT INTO {cap.table}_private VALUES (1)",
            f"INSERT INTO {cap.table} VALUES (1, 'a')",
        )

        async def scenario() -> None:
            async with cap.stream() as stream:
                txn = await next_txn(stream)
                assert [c.relation.table for c in txn.changes] == [cap.table]
                assert await nothing_within(stream, 1.0)

        run(scenario())


# --- confirmation and the slot's position ------------------------------------------------------------------------


def test_unconfirmed_transactions_are_delivered_again_confirmed_ones_are_not(pg_module):
    with capture(pg_module) as cap:
        for n in range(1, 4):
            execute(cap.dsn, f"INSERT INTO {cap.table} VALUES ({n}, 'row {n}')")

        async def first_run() -> list[Transaction]:
            async with cap.stream() as stream:
                txns = [await next_txn(stream) for _ in range(3)]
                stream.confirm(txns[0].end_lsn)
                await eventually(lambda: slot_positions(cap.dsn, cap.slot)[1] >= txns[0].end_lsn, what="confirm")
            return txns

        async def second_run() -> list[Transaction]:
            async with cap.stream() as stream:
                txns = [await next_txn(stream) for _ in range(2)]
                assert await nothing_within(stream, 1.0)
            return txns

        first = run(first_run())
        _, confirmed = slot_positions(cap.dsn, cap.slot)
        assert confirmed == first[0].end_lsn  # never beyond what was confirmed
        second = run(second_run())
        assert [(t.xid, t.end_lsn) for t in second] == [(t.xid, t.end_lsn) for t in first[1:]]
        assert [t.changes for t in second] == [t.changes for t in first[1:]]


def test_resume_after_skips_what_the_caller_already_stored(pg_module):
    with capture(pg_module) as cap:
        execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')", f"INSERT INTO {cap.table} VALUES (2, 'b')")

        async def scenario() -> None:
            async with cap.stream() as stream:
                first = await next_txn(stream)
            async with cap.stream(resume_after=first.end_lsn) as stream:
                second = await next_txn(stream)
                assert second.changes[0].new == {"id": "2", "name": "b"}

        run(scenario())


ENGINE = textwrap.dedent(
    """
    import asyncio, sys
    from appliance.sync.replication import ReplicationStream

    async def main(dsn, slot, publication, confirm_count):
        async with ReplicationStream(dsn, slot=slot, publication=publication) as stream:
            seen = 0
            async for txn in stream:
                seen += 1
                if seen <= confirm_count:
                    stream.confirm(txn.end_lsn)
                print(txn.xid, txn.end_lsn, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


def test_after_kill_9_of_the_engine_postgres_resends_everything_unconfirmed(pg_module):
    with capture(pg_module) as cap:
        for n in range(1, 6):
            execute(cap.dsn, f"INSERT INTO {cap.table} VALUES ({n}, 'row {n}')")
        engine = subprocess.Popen(
            [sys.executable, "-c", ENGINE, cap.dsn, cap.slot, cap.publication, "3"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert engine.stdout is not None
            delivered = [tuple(map(int, engine.stdout.readline().split())) for _ in range(5)]
            third_end = delivered[2][1]
            deadline = time.monotonic() + 10
            while slot_positions(cap.dsn, cap.slot)[1] < third_end:
                assert time.monotonic() < deadline, "engine's confirmation never reached the slot"
                time.sleep(0.05)
        finally:
            engine.send_signal(signal.SIGKILL)
            engine.wait()
        assert slot_positions(cap.dsn, cap.slot)[1] == third_end

        async def after_restart() -> list[tuple[int, int]]:
            async with cap.stream() as stream:
                return [(t.xid, t.end_lsn) for t in [await next_txn(stream), await next_txn(stream)]]

        assert run(after_restart()) == delivered[3:]


def test_slot_advances_while_only_unpublished_tables_are_written(pg_module):
    with capture(pg_module) as cap:
        execute(cap.dsn, f"CREATE TABLE {cap.table}_private (id int)")

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                txn = await next_txn(stream)
                stream.confirm(txn.end_lsn)
                await eventually(lambda: slot_positions(cap.dsn, cap.slot)[1] >= txn.end_lsn, what="confirm")
                restart_before, confirmed_before = slot_positions(cap.dsn, cap.slot)

                # Nothing published is written: pgoutput sends no transactions at all, only keepalives.
                execute(
                    cap.dsn,
                    f"INSERT INTO {cap.table}_private SELECT generate_series(1, 10000)",
                    "CHECKPOINT",  # logs the running-xacts record that lets restart_lsn move
                    f"INSERT INTO {cap.table}_private SELECT generate_series(1, 10000)",
                )
                written = parse_lsn(query_one(cap.dsn, "SELECT pg_current_wal_lsn()::text")[0])
                await eventually(
                    lambda: slot_positions(cap.dsn, cap.slot)[1] >= written,
                    timeout=5,
                    what="confirmed_flush_lsn past the unpublished writes",
                )
                await eventually(
                    lambda: slot_positions(cap.dsn, cap.slot)[0] > restart_before, timeout=5, what="restart_lsn moving"
                )
                assert slot_positions(cap.dsn, cap.slot)[1] > confirmed_before

        run(scenario())


def test_slot_does_not_advance_past_a_delivered_unconfirmed_transaction(pg_module):
    with capture(pg_module) as cap:
        execute(cap.dsn, f"CREATE TABLE {cap.table}_private (id int)")

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                txn = await next_txn(stream)  # delivered, deliberately not confirmed
                await asyncio.sleep(0.5)
                _, confirmed_before = slot_positions(cap.dsn, cap.slot)
                assert confirmed_before < txn.end_lsn
                execute(
                    cap.dsn,
                    f"INSERT INTO {cap.table}_private SELECT generate_series(1, 1000)",
                    "CHECKPOINT",
                    f"INSERT INTO {cap.table}_private SELECT generate_series(1, 1000)",
                )
                await asyncio.sleep(2)
                assert slot_positions(cap.dsn, cap.slot)[1] == confirmed_before

                stream.confirm(txn.end_lsn)  # now it may move, and past the unpublished writes too
                written = parse_lsn(query_one(cap.dsn, "SELECT pg_current_wal_lsn()::text")[0])
                execute(cap.dsn, f"INSERT INTO {cap.table}_private VALUES (1)")
                await eventually(
                    lambda: slot_positions(cap.dsn, cap.slot)[1] >= written, timeout=5, what="advance after confirm"
                )

        run(scenario())


def test_interleaved_transaction_waits_until_earlier_ones_are_confirmed(pg_module):
    """A transaction that began before an already confirmed one committed starts below the confirmed position;
    reading it with others unconfirmed would let psycopg2 confirm them on the next keepalive."""
    with capture(pg_module) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                late = psycopg.connect(cap.dsn)
                try:
                    late.execute(f"INSERT INTO {cap.table} VALUES (100, 'began first, commits last')")
                    execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                    first = await next_txn(stream)
                    stream.confirm(first.end_lsn)
                    await eventually(lambda: stream.flushed_lsn >= first.end_lsn, what="flush sent")

                    execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (2, 'b')")
                    late.commit()
                    second = await next_txn(stream)
                    assert second.changes[0].new == {"id": "2", "name": "b"}
                    assert await nothing_within(stream, 1.5)  # held back: second is not confirmed yet
                    stream.confirm(second.end_lsn)
                    third = await next_txn(stream)
                    assert third.changes[0].new == {"id": "100", "name": "began first, commits last"}
                finally:
                    late.close()

        run(scenario())


def test_a_slow_consumer_gets_everything_in_order(pg_module):
    with capture(pg_module) as cap:
        for n in range(50):
            execute(cap.dsn, f"INSERT INTO {cap.table} VALUES ({n}, 'x')")

        async def scenario() -> None:
            async with cap.stream(max_buffered_changes=5) as stream:
                ids = []
                for _ in range(50):
                    txn = await next_txn(stream)
                    ids.append(int(txn.changes[0].new["id"]))  # type: ignore[index,arg-type]
                    stream.confirm(txn.end_lsn)
                    await asyncio.sleep(0.01)
                assert ids == list(range(50))

        run(scenario())


# --- connection loss and slot loss -------------------------------------------------------------------------------


def test_reconnects_after_the_walsender_is_terminated_without_repeating_delivered_transactions(pg_module):
    with capture(pg_module) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                first = await next_txn(stream)  # delivered, not yet confirmed when the connection drops
                execute(
                    cap.dsn,
                    f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{cap.slot}'",
                )
                await eventually(lambda: stream.reconnects >= 1, what="reconnect")
                stream.confirm(first.end_lsn)
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (2, 'b')")
                second = await next_txn(stream)
                assert second.changes[0].new == {"id": "2", "name": "b"}
                assert await nothing_within(stream, 1.0)

        run(scenario())


def test_survives_a_postgres_crash_and_restart(pg):
    with capture(pg) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                first = await next_txn(stream)
                stream.confirm(first.end_lsn)
                await asyncio.to_thread(pg.kill)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(restart, pg)
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (2, 'b')")
                # The slot's confirmed position may fall back to its last checkpoint after a crash, so the
                # first transaction can be resent; the stream drops it because it was already delivered.
                second = await next_txn(stream, timeout=30)
                assert second.changes[0].new == {"id": "2", "name": "b"}
                assert stream.reconnects >= 1

        run(scenario())


def test_starting_on_a_missing_slot_raises_slot_lost(pg_module):
    async def scenario() -> None:
        async with ReplicationStream(pg_module.conninfo(), slot="never_created", publication="p") as stream:
            with pytest.raises(SlotLostError, match="does not exist"):
                await next_txn(stream)

    run(scenario())


def test_slot_dropped_while_streaming_raises_slot_lost(pg_module):
    with capture(pg_module) as cap:

        async def scenario() -> None:
            async with cap.stream(reconnect_delay=(1.0, 1.0)) as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                await next_txn(stream)
                with psycopg.connect(cap.dsn, autocommit=True) as conn:
                    deadline = time.monotonic() + 10
                    while True:  # the walsender is terminated, then the slot dropped before the reconnect
                        conn.execute(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                            " WHERE slot_name = %s AND active_pid IS NOT NULL",
                            [cap.slot],
                        )
                        try:
                            conn.execute("SELECT pg_drop_replication_slot(%s)", [cap.slot])
                            break
                        except psycopg.errors.ObjectInUse:
                            assert time.monotonic() < deadline
                            time.sleep(0.05)
                with pytest.raises(SlotLostError, match="does not exist"):
                    await next_txn(stream, timeout=15)

        run(scenario())


@pytest.mark.slow
def test_invalidated_slot_raises_slot_lost_and_setup_recreates_it(pg):
    execute(
        pg.conninfo(),
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "ALTER SYSTEM SET wal_keep_size = 0",
        "SELECT pg_reload_conf()",
    )
    with capture(pg) as cap:
        execute(cap.dsn, f"CREATE TABLE {cap.table}_private (id int, pad text)")

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                await next_txn(stream)  # not confirmed: the slot must keep its WAL, up to the limit

                with psycopg.connect(cap.dsn, autocommit=True) as conn:
                    for _ in range(30):
                        conn.execute(
                            f"INSERT INTO {cap.table}_private"
                            " SELECT i, repeat('x', 500) FROM generate_series(1, 5000) i"
                        )
                        conn.execute("SELECT pg_switch_wal()")
                        conn.execute("CHECKPOINT")
                        if slot_health(cap.dsn, cap.slot).wal_status == "lost":
                            break
                    assert slot_health(cap.dsn, cap.slot).wal_status == "lost"

                with pytest.raises(SlotLostError, match="invalidated"):
                    await next_txn(stream, timeout=30)

        run(scenario())
        setup = ensure_publication_and_slot(cap.dsn, cap.publication, cap.slot, [("public", cap.table)])
        assert setup.slot_recreated and not setup.slot_created
        assert slot_health(cap.dsn, cap.slot).wal_status == "reserved"


def test_held_reads_keep_the_connection_alive_under_a_short_wal_sender_timeout(pg):
    execute(pg.conninfo(), "ALTER SYSTEM SET wal_sender_timeout = '2s'", "SELECT pg_reload_conf()")
    with capture(pg) as cap:
        cap.dsn = pg.dsn  # the URI form works as well as key=value
        execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')", f"TRUNCATE {cap.table}")

        async def scenario() -> None:
            async with cap.stream(status_interval=10) as stream:
                first = await next_txn(stream)
                # The truncate comes with its table's Relation message again, and reading that while `first`
                # is unconfirmed is what _must_hold_reads forbids: the stream waits, answering nothing but
                # its own status updates, for three times the server's timeout.
                assert await nothing_within(stream, 6)
                assert stream.reconnects == 0
                stream.confirm(first.end_lsn)
                truncate = await next_txn(stream)
                assert [c.kind for c in truncate.changes] == ["truncate"]

        run(scenario())


def test_a_dropped_publication_is_an_error_not_a_reconnect_loop(pg_module):
    with capture(pg_module) as cap:

        async def scenario() -> None:
            async with cap.stream() as stream:
                execute(cap.dsn, f"INSERT INTO {cap.table} VALUES (1, 'a')")
                await take(stream)
                execute(cap.dsn, f"DROP PUBLICATION {cap.publication}", f"INSERT INTO {cap.table} VALUES (2, 'b')")
                with pytest.raises(ReplicationError, match="publication") as raised:
                    await next_txn(stream)
                assert not isinstance(raised.value, SlotLostError)

        run(scenario())
