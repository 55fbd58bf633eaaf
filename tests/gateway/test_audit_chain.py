"""The audit chain: canonical JSON any third party can recompute, tamper detection, and no fork under load."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.audit.canonical import CanonicalError, canonical_json, format_timestamp, parse_timestamp
from appliance.audit.chain import GENESIS_HASH, AuditEvent, ChainRow, build_rows, fetch_rows, verify_rows
from tests.gateway.conftest import Stack


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": [1, True, None, "é\n\"/\x7f"], "a": {"z": -5, "y": "\x01"}, "ä": 0}
    assert canonical_json(value) == '{"a":{"y":"\\u0001","z":-5},"b":[1,true,null,"é\\n\\"/\x7f"],"ä":0}'.encode()


@pytest.mark.parametrize("bad", [1.5, float("nan"), {"a": "\x00"}, {1: "x"}, 2**53, "\ud800", {"s": {1, 2}}])
def test_canonical_json_refuses_values_without_one_form(bad: object) -> None:
    with pytest.raises(CanonicalError):
        canonical_json(bad)


def test_timestamps_are_utc_microseconds_with_z() -> None:
    moment = datetime(2026, 1, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2026-01-31T21:59:59.000001Z"
    assert parse_timestamp("2026-01-31T21:59:59.000001Z") == moment
    for bad in ("2026-01-31T21:59:59Z", "2026-01-31T21:59:59.000001+00:00", "2026-01-31 21:59:59.000001Z"):
        with pytest.raises(CanonicalError):
            parse_timestamp(bad)


def test_hash_recomputes_from_the_documented_recipe() -> None:
    [row] = build_rows(0, GENESIS_HASH, [AuditEvent("alice", "house.create", uuid.UUID(int=7), "house:x", {"n": 1})])
    body = {"action": "house.create", "actor": "alice", "detail": {"n": 1},
            "house_id": "00000000-0000-0000-0000-000000000007", "seq": 1, "subject": "house:x",
            "ts": row.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert row.hash == hashlib.sha256(text + bytes(32)).hexdigest()
    assert row.prev_hash == GENESIS_HASH


def _chain(n: int) -> list[ChainRow]:
    return build_rows(0, GENESIS_HASH, [AuditEvent("a", "x.y", None, f"s{i}", {"i": i}) for i in range(n)])


def test_verify_names_the_first_break() -> None:
    rows = _chain(5)
    assert verify_rows(rows).ok
    altered = list(rows)
    altered[2] = ChainRow(**{**altered[2].__dict__, "detail": {"i": 99}})
    result = verify_rows(altered)
    assert not result.ok and result.first_break is not None
    assert result.first_break.seq == 3 and "altered" in result.first_break.reason
    gap = rows[:2] + rows[3:]
    result = verify_rows(gap)
    assert result.first_break is not None and result.first_break.seq == 4 and "missing" in result.first_break.reason
    swapped = [rows[0], rows[2], rows[1], *rows[3:]]
    result = verify_rows(swapped)
    assert result.first_break is not None and result.first_break.seq == 3
    assert not verify_rows(rows[1:], prev_hash=GENESIS_HASH).ok
    assert verify_rows(rows[1:]).ok  # a range: its first prev_hash taken as given


def test_concurrent_writers_never_fork_the_chain(stack: Stack) -> None:
    """N parallel audited writes through the gateway: seqs stay contiguous and the whole chain verifies."""
    with stack.env.superuser() as conn:
        before = conn.execute("SELECT seq FROM audit.chain_head").fetchone()
    assert before is not None
    users = [stack.user() for _ in range(8)]
    houses = [u.house(f"h{i}") for i, u in enumerate(users)]
    errors: list[str] = []

    def writer(index: int) -> None:
        user, house = users[index], houses[index]
        for n in range(15):
            response = user.post("/api/environments", {"house_id": house, "name": f"env-{n}"})
            if response.status_code != 201:
                errors.append(response.text)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stack.flush_audit()
    with stack.env.superuser() as conn:
        rows = fetch_rows(conn, 0, 1_000_000)
        head = conn.execute("SELECT seq, hash FROM audit.chain_head").fetchone()
    result = verify_rows(rows, prev_hash=GENESIS_HASH, first_seq=1)
    assert result.ok, result.first_break
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert head == (rows[-1].seq, rows[-1].hash)
    creates = [r for r in rows if r.seq > before[0] and r.action == "environment.create"]
    assert len(creates) == 8 * 15
