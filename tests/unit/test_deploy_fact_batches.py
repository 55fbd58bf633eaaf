"""The deploy asks its facts in batches (appliance/deploys/facts.py): each part must come back as pyinfra would
have returned it asked alone. The shell commands run here for real."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from pyinfra.facts.files import Sha1File
from pyinfra.facts.server import Command, Which

from appliance import desired
from appliance.deploys.facts import (
    Accounts,
    Batch,
    FileContent,
    StartEarly,
    _command,
    _key,
    collect_early,
)
from appliance.deploys.managed import ABSENT, PathState, PathStates


def sh(command: str) -> list[str]:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.splitlines()


def alone(cls, **kwargs):  # type: ignore[no-untyped-def]
    """What pyinfra's own path gives for this fact: its command run by itself, then its process/default."""
    fact = cls()
    lines = sh(_command(fact, _key(cls, kwargs)))
    return fact.process(lines) if lines else fact.default()


def test_a_batch_gives_each_fact_what_it_gives_alone(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("abc123\nsecond line\n")
    (tmp_path / "no-newline").write_text("last line without a newline")
    facts = [
        (FileContent, {"path": str(tmp_path / "marker")}),
        (FileContent, {"path": str(tmp_path / "missing")}),
        (Command, {"command": f"cat {tmp_path / 'no-newline'}"}),
        (Command, {"command": "true"}),  # prints nothing: the fact's default
        (Sha1File, {"path": str(tmp_path / "marker")}),  # keeps what its command was given, for its output
        (Which, {"command": "sh"}),
        (Accounts, {}),
    ]
    keys = [_key(cls, kwargs) for cls, kwargs in facts]
    instances = [cls() for cls, _ in keys]
    batch = Batch()
    results = batch.process(sh(batch.command(tuple(_command(f, k) for f, k in zip(instances, keys, strict=True)))))
    assert [status for status, _ in results] == [0] * len(facts)
    got = [f.process(lines) if lines else f.default() for f, (_, lines) in zip(instances, results, strict=True)]
    assert got == [alone(cls, **kwargs) for cls, kwargs in facts]
    assert got[0] == "abc123" and got[1] is None and got[2] == "last line without a newline"
    assert got[4] == hashlib.sha1((tmp_path / "marker").read_bytes()).hexdigest()
    assert got[6]["root"] == ("/root", got[6]["root"][1])


def test_a_failing_part_is_reported_as_failed_and_the_others_still_answer() -> None:
    batch = Batch()
    results = batch.process(sh(batch.command(("echo one", "echo partial; exit 3", "echo three"))))
    assert results == [(0, ["one"]), (3, ["partial"]), (0, ["three"])]


def test_the_parts_run_side_by_side() -> None:
    batch = Batch()
    start = time.monotonic()
    sh(batch.command(tuple("sleep 0.5" for _ in range(4))))
    assert time.monotonic() - start < 1.5


def test_path_states_in_one_command(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o710)
    os.chmod(directory, 0o710)
    file = tmp_path / "f"
    file.write_text("content\n")
    os.chmod(file, 0o640)
    empty = tmp_path / "empty"
    empty.write_text("")
    link = tmp_path / "link"
    link.symlink_to(file)
    paths = (str(directory), str(file), str(empty), str(link), str(tmp_path / "absent"))
    states = PathStates().process(sh(PathStates().command(paths)))
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    assert states[str(directory)] == PathState("directory", user, group, "710", "")
    assert states[str(file)] == PathState("regular file", user, group, "640",
                                          hashlib.sha1(b"content\n").hexdigest())
    # As `stat` names them: an empty file is no "regular file" (the managed-file step rewrites it), a link is not
    # followed.
    assert states[str(empty)].kind == "regular empty file"
    assert states[str(link)].kind == "symbolic link" and states[str(link)].sha1 == ""
    assert states.get(str(tmp_path / "absent"), ABSENT) == ABSENT
    # Ansible's plan reads the same command (appliance.playbook) with the absent paths listed.
    listed = desired.parse_path_states(paths, sh(desired.path_states_command(paths)))
    assert listed[str(tmp_path / "absent")] == ["absent", "", "", "", ""]
    assert listed[str(file)] == ["regular file", user, group, "640", hashlib.sha1(b"content\n").hexdigest()]


def test_a_fact_started_early_is_collected_later_and_its_status_kept(tmp_path: Path) -> None:
    commands = ("sleep 0.3; echo slow", "echo failed; exit 4")
    early = StartEarly()
    directory = early.process(sh(early.command(commands)))
    assert directory.startswith("/tmp/appliance-facts.")
    assert oct(os.stat(directory).st_mode & 0o777) == "0o700"
    batch = Batch()
    collected = tuple(collect_early(directory, i, "echo never run") for i in range(len(commands)))
    results = batch.process(sh(batch.command(collected, (directory,))))
    assert results == [(0, ["slow"]), (4, ["failed"])]
    assert not Path(directory).exists()


def test_a_fact_whose_early_run_vanished_runs_then() -> None:
    gone = "/tmp/appliance-facts.gone-for-the-test"
    batch = Batch()
    results = batch.process(sh(batch.command((collect_early(gone, 0, "echo ran now"),))))
    assert results == [(0, ["ran now"])]


def test_a_fact_started_early_that_was_killed_runs_then() -> None:
    early = StartEarly()
    directory = early.process(sh(early.command(("sleep 30; echo too late",))))
    os.kill(int(Path(directory, "0.pid").read_text()), 9)
    batch = Batch()
    start = time.monotonic()
    results = batch.process(sh(batch.command((collect_early(directory, 0, "echo ran now"),), (directory,))))
    assert results == [(0, ["ran now"])]
    assert time.monotonic() - start < 5
