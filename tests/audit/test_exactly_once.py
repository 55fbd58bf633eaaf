"""Exactly once across kill -9: the shipper runs as its own process (`appliance audit ship`), is killed by PID
at each step of shipping a batch (held there by its test hook) and at random moments under load, and then
restarted. Afterwards no seq is missing, none is in two objects, no key has a second version, and every
object is byte for byte what its rows give."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from appliance.audit.batch import prefix
from appliance.audit.store import list_versions
from tests.support.audit import AuditRig, audit_rig, kill9, stop, wait_for
from tests.support.objectstore import ObjectStore


@pytest.mark.parametrize("point", ["after_plan", "after_put", "after_record"])
def test_kill9_at_each_step_of_a_batch_leaves_no_gap_duplicate_or_different_object(
        store: ObjectStore, point: str, tmp_path: Path) -> None:
    with audit_rig(store, audit={"batch_max_events": 40, "batch_max_age_s": 0.2}) as rig:
        rig.append(100)
        marker = tmp_path / "paused"
        process = rig.start_shipper("--pause-at", f"{point}:{marker}", log_name=f"ship-{point}.log")
        try:
            wait_for(marker.exists, 60, f"the shipper to reach {point}")
            # The first batch (1-40) is held at `point`: planned; PUT and acknowledged; or recorded.
            assert marker.read_text().split()[:3] == [point, "1", "40"]
            keys = [v.key for v in list_versions(rig.s3(), rig.bucket, prefix(rig.tenant.id))]
            assert len(keys) == (0 if point == "after_plan" else 1)
            assert rig.shipped() == (40 if point == "after_record" else 0)
        finally:
            kill9(process)
        rig.append(30)  # more events arrive meanwhile: the in-flight batch must keep its boundaries
        process = rig.start_shipper(log_name=f"ship-{point}-2.log")
        try:
            rig.wait_shipped(130)
        finally:
            assert stop(process) == 0, rig.shipper_log(f"ship-{point}-2.log")
        rig.assert_exactly_once()
        keys = sorted(v.key.rsplit("/", 1)[1] for v in list_versions(rig.s3(), rig.bucket, prefix(rig.tenant.id)))
        assert keys[0] == "000000000001-000000000040.jsonl.gz"
        if point == "after_put":
            assert "already in the store" in rig.shipper_log(f"ship-{point}-2.log")  # adopted, not re-PUT
        report = rig.verify("both")
        assert report.ok, report.summary()


def test_kill9_at_random_moments_under_load(rig_small_batches: AuditRig) -> None:
    rig = rig_small_batches
    stop_writing = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with rig.gateway_conn() as conn:
                while not stop_writing.is_set():
                    rig.append(random.randint(1, 15), conn=conn)
                    time.sleep(0.005)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        rng = random.Random(6)
        for round_ in range(12):
            process = rig.start_shipper(log_name=f"chaos-{round_}.log")
            time.sleep(rng.uniform(0.3, 1.5))
            kill9(process)
    finally:
        stop_writing.set()
        thread.join()
    assert not errors, errors
    head = rig.head()
    process = rig.start_shipper(log_name="chaos-final.log")
    try:
        rig.wait_shipped(head, 120)
    finally:
        stop(process)
    batches = rig.assert_exactly_once()
    assert batches > 12
    report = rig.verify("both")
    assert report.ok, report.summary()


@pytest.fixture
def rig_small_batches(store: ObjectStore) -> object:
    with audit_rig(store, audit={"batch_max_events": 25, "batch_max_age_s": 0.1}) as rig:
        yield rig


def test_a_second_shipper_waits_for_the_first(rig: AuditRig) -> None:
    rig.append(50)
    first, second = rig.start_shipper(log_name="one.log"), rig.start_shipper(log_name="two.log")
    try:
        rig.wait_shipped(50, 60)
        rig.append(50)
        rig.wait_shipped(100, 60)
    finally:
        stop(first)
        stop(second)
    logs = rig.shipper_log("one.log") + rig.shipper_log("two.log")
    assert "holds the lock" in logs
    rig.assert_exactly_once()
