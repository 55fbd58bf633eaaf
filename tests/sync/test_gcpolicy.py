"""The sync engine's garbage collection policy (appliance/sync/gcpolicy.py), in a process of its own: it changes
process-wide state that the test run itself must not inherit."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from appliance.sync import gcpolicy

assert gc.get_freeze_count() == 0
gcpolicy.install()
gcpolicy.install()  # a second call adds nothing
assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
assert gc.callbacks.count(gcpolicy._after_collection) == 1
kept = [[i] for i in range(10_000)]  # long-lived, tracked objects, as an engine's shapes are
gc.collect()
frozen = gc.get_freeze_count()
assert frozen >= len(kept), frozen

gcpolicy.released(gcpolicy.RELEASE_UNFREEZE - 1)
assert gc.get_freeze_count() == frozen  # not yet
gcpolicy.released()
assert gc.get_freeze_count() == 0  # walked again by the next full collection, which frees what is gone


class Cycle:
    pass


dropped = Cycle()
dropped.me = dropped
gc.collect()
assert gc.get_freeze_count() > 0
gcpolicy.released(gcpolicy.RELEASE_UNFREEZE)
del dropped
assert gc.collect() > 0  # the frozen cycle is collected once unfrozen
print("ok")
"""


def test_full_collections_freeze_survivors_and_dropped_shapes_unfreeze_them() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


BURST = """
import gc
from appliance.sync import gcpolicy

gcpolicy.install()
assert gc.get_threshold()[2] == gcpolicy.FULL_AFTER_MIDDLE
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None)
shapes = [[{"where": [n]} for n in range(50)] for _ in range(10_000)]  # ~1.5 million long-lived objects
assert len(full) >= 3, full  # frozen in steps as they came...
unfrozen = len(gc.get_objects())
assert unfrozen < 400_000, unfrozen  # ...so the first full collection after the burst has little to walk
print("ok")
"""


def test_a_burst_of_new_shapes_is_frozen_as_it_comes_not_left_to_one_long_collection() -> None:
    result = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
