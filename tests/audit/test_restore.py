"""After a point-in-time restore the database may know less than the store: shipped batches it has no record
of, even events it lost. The shipper records what it can prove it shipped, halts on what it cannot, and
`appliance audit recover` re-imports the lost events, so the chain goes on without forking."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.audit.status import audit_status
from tests.support.audit import AuditRig, audit_rig, stop, wait_for
from tests.support.objectstore import ObjectStore


@pytest.fixture
def shipped(store: ObjectStore) -> Iterator[AuditRig]:
    with audit_rig(store, audit={"batch_max_events": 100, "batch_max_age_s": 0.3}) as rig:
        rig.append(300)
        assert rig.ship_all() == 300
        yield rig


def rewind(rig: AuditRig, keep_through: int, shipped_through: int) -> None:
    """What restoring to an earlier point does to the audit tables: events after `keep_through` gone, batch
    records and the watermark as they stood when shipping had reached `shipped_through`."""
    with rig.superuser() as conn, conn.transaction():
        for table, trigger in (("audit.events", "events_insert_only"), ("audit.shipped", "shipped_forward_only"),
                               ("audit.batches", "batches_guard")):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")  # type: ignore[arg-type]
        conn.execute("DELETE FROM audit.events WHERE seq > %s", (keep_through,))
        conn.execute("UPDATE audit.chain_head h SET seq = e.seq, hash = e.hash FROM audit.events e WHERE e.seq = %s",
                     (keep_through,))
        conn.execute("DELETE FROM audit.batches WHERE last_seq > %s", (shipped_through,))
        conn.execute("UPDATE audit.shipped SET last_seq = %s, last_hash = (SELECT hash FROM audit.events "
                     "WHERE seq = %s)", (shipped_through, shipped_through))
        for table, trigger in (("audit.events", "events_insert_only"), ("audit.shipped", "shipped_forward_only"),
                               ("audit.batches", "batches_guard")):
            conn.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")  # type: ignore[arg-type]


def test_batches_shipped_before_the_restore_point_are_recorded_not_shipped_again(shipped: AuditRig) -> None:
    rig = shipped
    rewind(rig, keep_through=300, shipped_through=100)
    rig.append(20)
    process = rig.start_shipper(log_name="adopt.log")
    try:
        rig.wait_shipped(320)
    finally:
        stop(process)
    assert rig.shipper_log("adopt.log").count("recorded it now") == 2
    rig.assert_exactly_once()
    assert rig.verify("both").ok


def test_events_lost_by_a_restore_are_recovered_from_the_store(shipped: AuditRig) -> None:
    rig = shipped
    rewind(rig, keep_through=150, shipped_through=100)
    process = rig.start_shipper(log_name="lost.log")
    try:
        wait_for(lambda: audit_status(rig.tenant)["error_kind"] == "conflict", 60, "the shipper to halt")
        assert "appliance audit recover" in str(audit_status(rig.tenant)["detail"])
        result = rig.cli("audit", "recover", rig.tenant.id)
        assert result.returncode == 0, result.stderr
        assert "recorded 2 shipped batch(es) and re-imported 150 event(s)" in result.stdout
        assert rig.head() == 300 and rig.shipped() == 300
        rig.append(10)  # the chain goes on from the store's last event
        rig.wait_shipped(310, 90)  # the halted shipper retries and goes on
    finally:
        stop(process)
    rig.assert_exactly_once()
    report = rig.verify("both")
    assert report.ok, report.summary()


def test_recover_refuses_a_chain_that_forked_after_the_restore(shipped: AuditRig) -> None:
    rig = shipped
    rewind(rig, keep_through=150, shipped_through=100)
    rig.append(5, action="written.after.restore")  # seq 151-155: not the events the store holds
    result = rig.cli("audit", "recover", rig.tenant.id)
    assert result.returncode == 1
    assert "seq 151" in result.stderr and "forked" in result.stderr
    assert rig.head() == 155 and rig.shipped() == 100  # nothing changed
    report = rig.verify("both")
    first = report.first_break
    assert first is not None and first.seq == 151 and first.kind == "mismatch", report.summary()
