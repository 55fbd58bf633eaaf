"""Entries recorded in groups (appliance/gateway/domain/entry_groups.py): concurrent entries share one transaction and
stay exactly-once; an entry whose lock is busy never holds up its group; a failed group records each entry
alone; and no group leaves an entry lock behind.

Grouping is forced rather than hoped for: a test session holds the audit chain head, so the first entry's
record waits on it and every entry posted meanwhile queues for the next group."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from appliance.audit.chain import GENESIS_HASH, fetch_rows, verify_rows
from appliance.gateway.domain.access import Principal
from appliance.gateway.domain.entries import lock_key, record_params
from appliance.gateway.domain.entry_groups import RECORD_PARAMS
from appliance.gateway.domain.models import EntryCreate
from tests.gateway.conftest import Stack, User
from tests.gateway.test_threads import entry, read_all, wait_for


def recorder(stack: Stack) -> Any:
    return stack.gateway.app.state.gateway.entries.groups


@contextlib.contextmanager
def chain_head_held(stack: Stack) -> Iterator[psycopg.Connection[Any]]:
    """Every audited write of the tenant waits while this block runs."""
    with stack.env.superuser() as conn, conn.transaction(force_rollback=True):
        conn.execute("SELECT audit.lock_head()")
        yield conn


def advisory_locks(stack: Stack) -> int:
    return int(stack.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")[0][0])


def post_all(user: User, posts: list[tuple[str, dict[str, Any]]], pool: concurrent.futures.Executor
             ) -> list[concurrent.futures.Future[httpx.Response]]:
    return [pool.submit(user.post, f"/api/threads/{thread}/entries", body) for thread, body in posts]


def wait_queued(stack: Stack, count: int) -> None:
    wait_for(lambda: recorder(stack).queued >= count, timeout=15, interval=0.01)


def test_concurrent_entries_share_groups_and_each_is_stored_once(stack: Stack, member: tuple[User, str, str]
                                                                  ) -> None:
    user, house, thread = member
    threads = [thread, user.thread(house), user.thread(house)]
    bodies = [(threads[i % 3], entry(f"grouped {i}")) for i in range(24)]
    # Every entry twice at once (a client retrying before its first answer), so groups meet their own ids.
    posts = bodies + bodies
    with concurrent.futures.ThreadPoolExecutor(len(posts)) as pool:
        with chain_head_held(stack):
            futures = post_all(user, posts, pool)
            wait_queued(stack, 20)
        responses = [future.result(timeout=60) for future in futures]
    assert recorder(stack).largest_group == recorder(stack).max_group  # full groups, and none larger
    by_id: dict[str, list[int]] = {}
    for (_, body), response in zip(posts, responses, strict=True):
        assert response.status_code in (200, 201), response.text
        by_id.setdefault(body["id"], []).append(response.status_code)
    assert all(sorted(codes) == [200, 201] for codes in by_id.values()), by_id
    for t in threads:
        ids = [m["id"] for m in read_all(user, t)]
        assert sorted(ids) == sorted(body["id"] for tt, body in bodies if tt == t)
    wait_for(lambda: stack.sql("SELECT count(*) FROM appliance.thread_entries WHERE id = ANY(%s) "
                               "AND state = 'appended'", [[b["id"] for _, b in bodies]]) == [(24,)])
    wait_for(lambda: advisory_locks(stack) == 0)


def test_an_entry_whose_lock_is_held_elsewhere_does_not_hold_up_its_group(
        stack: Stack, member: tuple[User, str, str]) -> None:
    user, _, thread = member
    stuck = entry("its lock is taken")
    others = [entry(f"free {i}") for i in range(6)]
    with stack.env.superuser() as holder, concurrent.futures.ThreadPoolExecutor(8) as pool:
        holder.autocommit = True
        holder.execute("SELECT pg_advisory_lock(%s)", [lock_key(uuid.UUID(stuck["id"]))])
        with chain_head_held(stack):
            first = pool.submit(user.post, f"/api/threads/{thread}/entries", entry("first"))
            wait_for(lambda: recorder(stack).queued == 0 and recorder(stack).recording, interval=0.01)
            grouped = post_all(user, [(thread, body) for body in [stuck, *others]], pool)
            wait_queued(stack, 7)
        # The group commits without the stuck entry, whose lock another session holds.
        assert first.result(timeout=30).status_code == 201
        assert [f.result(timeout=30).status_code for f in grouped[1:]] == [201] * 6
        time.sleep(0.3)
        assert not grouped[0].done()
        holder.execute("SELECT pg_advisory_unlock(%s)", [lock_key(uuid.UUID(stuck["id"]))])
        assert grouped[0].result(timeout=30).status_code == 201
    ids = [m["id"] for m in read_all(user, thread)]
    assert sorted(ids[1:]) == sorted(b["id"] for b in [stuck, *others]) and len(ids) == 8
    wait_for(lambda: advisory_locks(stack) == 0)


def test_a_failed_group_records_each_entry_alone(stack: Stack, member: tuple[User, str, str]) -> None:
    user, _, thread = member
    good = [entry(f"good {i}") for i in range(4)]
    bad = entry("refused by the database")
    # A trigger standing in for any error inside a group's transaction: it fails only the entry it names.
    stack.sql(
        "CREATE FUNCTION appliance.test_refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.id = '{bad['id']}' THEN RAISE EXCEPTION 'test refusal'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER test_refuse_entry BEFORE INSERT ON appliance.thread_entries FOR EACH ROW "
        "EXECUTE FUNCTION appliance.test_refuse_entry()"
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            with chain_head_held(stack):
                first = pool.submit(user.post, f"/api/threads/{thread}/entries", entry("first"))
                wait_for(lambda: recorder(stack).queued == 0 and recorder(stack).recording, interval=0.01)
                grouped = post_all(user, [(thread, body) for body in [*good[:2], bad, *good[2:]]], pool)
                wait_queued(stack, 5)
            assert first.result(timeout=30).status_code == 201
            statuses = [f.result(timeout=30).status_code for f in grouped]
    finally:
        stack.sql("DROP TRIGGER test_refuse_entry ON appliance.thread_entries; "
                  "DROP FUNCTION appliance.test_refuse_entry()")
    assert statuses == [201, 201, 500, 201, 201]
    ids = [m["id"] for m in read_all(user, thread)]
    assert sorted(ids[1:]) == sorted(b["id"] for b in good) and bad["id"] not in ids
    assert stack.sql("SELECT count(*) FROM appliance.thread_entries WHERE id = %s", [bad["id"]]) == [(0,)]
    wait_for(lambda: advisory_locks(stack) == 0)


def test_a_finished_groups_step_4_rides_on_the_next_groups_record(stack: Stack, member: tuple[User, str, str]
                                                                   ) -> None:
    """One writer posting back to back: each entry's group hands its connection, locks and step 4 to the next
    entry's record (one round trip and one commit instead of two); the last one finishes alone when nobody comes.
    Every entry ends appended exactly once and no lock is left behind."""
    user, _, thread = member
    handed_before = recorder(stack).handed_on
    bodies = [entry(f"back to back {i}") for i in range(6)]
    for body in bodies:
        assert user.post(f"/api/threads/{thread}/entries", body).status_code == 201
    assert recorder(stack).handed_on > handed_before
    ids = [b["id"] for b in bodies]
    wait_for(lambda: stack.sql("SELECT count(*) FROM appliance.thread_entries WHERE id = ANY(%s) "
                               "AND state = 'appended'", [ids]) == [(6,)])
    assert [m["id"] for m in read_all(user, thread)][-6:] == ids
    wait_for(lambda: advisory_locks(stack) == 0)


def test_a_failed_group_still_records_the_step_4_it_carried(stack: Stack, member: tuple[User, str, str]) -> None:
    user, _, thread = member
    first = entry("finished, its step 4 handed on")
    bad = entry("refused by the database")
    stack.sql(
        "CREATE FUNCTION appliance.test_refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.id = '{bad['id']}' THEN RAISE EXCEPTION 'test refusal'; END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER test_refuse_entry BEFORE INSERT ON appliance.thread_entries FOR EACH ROW "
        "EXECUTE FUNCTION appliance.test_refuse_entry()"
    )
    try:
        handed_before = recorder(stack).handed_on
        assert user.post(f"/api/threads/{thread}/entries", first).status_code == 201
        assert user.post(f"/api/threads/{thread}/entries", bad).status_code == 500
        assert recorder(stack).handed_on > handed_before  # the refused record carried the first one's step 4
    finally:
        stack.sql("DROP TRIGGER test_refuse_entry ON appliance.thread_entries; "
                  "DROP FUNCTION appliance.test_refuse_entry()")
    wait_for(lambda: stack.sql("SELECT state FROM appliance.thread_entries WHERE id = %s", [first["id"]])
             == [("appended",)], timeout=5)
    assert stack.sql("SELECT count(*) FROM appliance.thread_entries WHERE id = %s", [bad["id"]]) == [(0,)]
    wait_for(lambda: advisory_locks(stack) == 0)


def test_the_older_entry_points_still_record_through_the_one_function(stack: Stack, member: tuple[User, str, str]
                                                                      ) -> None:
    """What a gateway started before tenantdb migration 0015 calls (record_entry, try_record_entry,
    try_record_entry_after) records, refuses and audits as before, now through record_entry_flat; the finished
    entries a record carries are marked appended (by id, appliance.mark_appended), and the chain verifies."""
    user, _, thread = member
    thread_id = uuid.UUID(thread)
    principal = Principal(user.id, "test")
    columns = ", ".join(f"%({name})s" for name in RECORD_PARAMS)

    def params(text: str, poster: Principal = principal) -> dict[str, Any]:
        values = record_params(poster, thread_id, EntryCreate(id=uuid.uuid4(), text=text))
        return {**values, "message": Jsonb(values["message"]), "detail": Jsonb(values["detail"])}

    first, second, third = params("via record_entry"), params("via try_record_entry"), params("via after")
    stranger = params("not a member", Principal(uuid.uuid4(), "test"))
    with stack.env.superuser() as conn:
        before = conn.execute("SELECT seq FROM audit.chain_head").fetchone()
        assert before is not None
        with conn.transaction():
            row = conn.execute(f"SELECT o_status, o_message FROM appliance.record_entry({columns})", first).fetchone()
            assert row is not None and row[0] == "recorded" and row[1]["author"]["kind"] == "user"
        with conn.transaction():
            row = conn.execute(f"SELECT o_status FROM appliance.try_record_entry({columns})", second).fetchone()
            assert row == ("recorded",)
        with conn.transaction():
            row = conn.execute(f"SELECT o_status FROM appliance.try_record_entry({columns})", stranger).fetchone()
            assert row == ("not_a_member",)
        with conn.transaction():
            row = conn.execute(
                f"SELECT o_status FROM appliance.try_record_entry_after(true, %(done)s, %(offsets)s, {columns})",
                {**third, "done": [first["id"], second["id"]], "offsets": ["0000_0001", "0000_0002"]}).fetchone()
            assert row == ("recorded",)
        states = dict(conn.execute(
            "SELECT id, state || ':' || coalesce(next_offset, '') FROM appliance.thread_entries WHERE id = ANY(%s)",
            [[first["id"], second["id"], third["id"]]]).fetchall())
        assert states == {first["id"]: "appended:0000_0001", second["id"]: "appended:0000_0002",
                          third["id"]: "pending:"}
        # A retry of a recorded entry is recognised; step 4 by id marks it, and once only.
        with conn.transaction():
            row = conn.execute(f"SELECT o_status FROM appliance.record_entry({columns})", third).fetchone()
            assert row == ("retry",)
        marked = conn.execute("SELECT o_released, o_marked FROM appliance.mark_appended(%s, %s)",
                              [[third["id"], third["id"]], ["0000_0003", "0000_0004"]]).fetchone()
        assert marked == (0, 1)
        assert conn.execute("SELECT next_offset FROM appliance.thread_entries WHERE id = %s",
                            [third["id"]]).fetchone() == ("0000_0003",)
        conn.execute("SELECT pg_advisory_unlock_all()")
        rows = fetch_rows(conn, 0, 1_000_000)
    assert verify_rows(rows, prev_hash=GENESIS_HASH, first_seq=1).ok
    appended = [r for r in rows if r.seq > before[0] and r.action == "thread.entry.append"]
    assert [r.detail["entry_id"] for r in appended] == [str(first["id"]), str(second["id"]), str(third["id"])]
    assert all(r.detail["unknown_mentions"] == [] for r in appended)
