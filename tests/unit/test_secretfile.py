"""appliance.secretfile: long-running readers follow a rotated secret file without a restart, and the checking
side accepts the replaced value only for its grace period."""

from __future__ import annotations

from pathlib import Path

from appliance.objectstore.files import write_atomic
from appliance.secretfile import SecretFile


class Clock:
    """Wall-clock time under the test's control, starting now (the grace period runs from the file's mtime)."""

    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _rotate(path: Path, value: str) -> None:
    write_atomic(path, (value + "\n").encode(), 0o600)  # as `appliance secret rotate` does: a rename


def test_a_rotated_file_is_followed_within_the_recheck_interval(tmp_path: Path) -> None:
    path = tmp_path / "sync_secret"
    _rotate(path, "old")
    clock = Clock()
    secret = SecretFile(path, recheck_s=1.0, grace_s=5.0, clock=clock)
    assert secret.value() == "old"
    _rotate(path, "new")
    clock.now += 0.5
    assert secret.value() == "old"  # not looked at again yet: one stat per second at most
    clock.now += 0.6
    assert secret.value() == "new"


def test_the_checker_accepts_the_replaced_value_for_its_grace_period_only(tmp_path: Path) -> None:
    path = tmp_path / "agents_internal_token"
    _rotate(path, "old")
    clock = Clock()
    secret = SecretFile(path, recheck_s=1.0, grace_s=5.0, clock=clock)
    assert secret.accepts("old") and not secret.accepts("new") and not secret.accepts("")
    _rotate(path, "new")
    changed = path.stat().st_mtime
    clock.now = changed + 1.1  # mtimes come from a coarser clock than time.time()
    assert secret.accepts("new") and secret.accepts("old")
    clock.now = changed + 5.1
    assert secret.accepts("new") and not secret.accepts("old")
    assert not secret.accepts("new-ish") and not secret.accepts("ol")


def test_a_checker_that_notices_late_refuses_the_old_value_at_once(tmp_path: Path) -> None:
    """The grace runs from the change, not from when a reader that was idle first looks again."""
    path = tmp_path / "agents_internal_token"
    _rotate(path, "old")
    clock = Clock()
    secret = SecretFile(path, recheck_s=1.0, grace_s=5.0, clock=clock)
    _rotate(path, "new")
    clock.now = path.stat().st_mtime + 60
    assert not secret.accepts("old") and secret.accepts("new")


def test_an_unreadable_file_keeps_the_value_in_hand_and_an_empty_one_accepts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _rotate(path, "v")
    clock = Clock()
    secret = SecretFile(path, clock=clock)
    path.unlink()
    clock.now += 2
    assert secret.value() == "v" and secret.accepts("v")
    _rotate(path, "")
    clock.now += 2
    assert secret.value() == "" and not secret.accepts("")


def test_a_checker_given_the_new_value_before_its_recheck_looks_at_once(tmp_path: Path) -> None:
    """The presenting side may notice a rotation first; its new value must not be refused until the checker's
    own recheck comes round (a shape GET was answered 401 in CI this way)."""
    path = tmp_path / "sync_secret"
    _rotate(path, "old")
    clock = Clock()
    secret = SecretFile(path, recheck_s=1.0, grace_s=5.0, clock=clock)
    assert secret.accepts("old")
    _rotate(path, "new")
    clock.now = max(clock.now, path.stat().st_mtime)  # no recheck due: the checker looked just now
    assert secret.accepts("new") and secret.accepts("old")
    assert not secret.accepts("other")
