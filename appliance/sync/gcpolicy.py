"""How the sync engine's process collects garbage: long-lived objects are frozen after each full collection.

An engine holds thousands of shapes, each with about 160 long-lived objects (its compiled where, its log's
indexes and locks, its registry record). CPython's full collections walk every tracked object, and their
number grows with the shapes: a run that registered 3,000 shapes (about 480,000 tracked objects) and then
took the 10,000-change load of `tests/bench/bench_sync_shapes.py` spent 2.0 s in 8 full collections, a quarter
of a second each (measured with gc.callbacks in a profiling run). So:

- after every full collection its survivors are frozen (`gc.freeze()`): kept in a generation no later
  collection walks, so a full collection costs what was allocated since the last one, not every shape held;
- young collections run less often (a larger first threshold): the engine allocates and frees many small
  objects per change (messages, rows), nearly all freed by reference counting long before a collection;
- full collections are considered after every FULL_AFTER_MIDDLE + 1 middle ones (CPython's default is 11),
  so a burst of new shapes is frozen in steps as it comes. With the default, registering 10,000 shapes saw
  about one full collection: a million objects were left for the first one after it, which then took 0.84 s
  of a 3.7 s load (gc.callbacks, in a profiling run of `bench_sync_shapes`' load on 10,000 shapes). CPython
  still runs a full collection only once what reached the old generation since the last one is a quarter
  of what that one kept, so each stays about as long as a young collection when nothing piles up;
- frozen objects are only reclaimed by reference counting. A dropped shape whose objects sit in a reference
  cycle would stay, so after RELEASE_UNFREEZE dropped shapes everything is unfrozen, and the next full
  collection walks (and frees) them before freezing what is left again.
"""

from __future__ import annotations

import gc
import threading
from typing import Any, Final

# Allocations (minus frees) between young collections: CPython's default is 700.
YOUNG_THRESHOLD: Final = 10_000
# Middle collections between full ones, minus one (the third threshold): CPython's default is 10.
FULL_AFTER_MIDDLE: Final = 1
# Dropped shapes (deleted, rotated) after which the frozen objects are walked again.
RELEASE_UNFREEZE: Final = 500

_lock = threading.Lock()
_released = 0
_installed = False


def _after_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def install() -> None:
    """Apply the policy to this process (once; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, FULL_AFTER_MIDDLE)
    gc.callbacks.append(_after_collection)


def released(shapes: int = 1) -> None:
    """Count dropped shapes; past RELEASE_UNFREEZE, the next full collection walks everything again."""
    global _released
    with _lock:
        _released += shapes
        if _released < RELEASE_UNFREEZE or not _installed:
            return
        _released = 0
    gc.unfreeze()
