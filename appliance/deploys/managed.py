"""Managed files, directories and OS users, whose state is read with one command per host per run.

pyinfra's `files.put`/`files.directory` ask two or three facts each, a shell round trip apiece; with a dozen
files per tenant that made a no-op redeploy cost seconds. Here every path the deploy manages is registered
while the deploy file is read, and the state of all of them (type, owner, group, mode, sha1) is read at once,
in the run's snapshot of facts (appliance.deploys.facts) when the first managed path is applied before any
operation changed anything, else then on its own. Each path is managed by exactly one operation, so that early
read cannot be stale for it.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from appliance import desired
from appliance.deploys import facts
from appliance.desired import Managed


@dataclass(frozen=True)
class PathState:
    kind: str  # "regular file", "directory", "absent", ...
    user: str
    group: str
    mode: str  # octal digits as stat prints them, e.g. "700"
    sha1: str


class PathStates(FactBase[dict[str, PathState]]):
    """The state of every path given, from one `stat` and one `sha1sum` (appliance.desired: Ansible's plan reads
    them with the same command)."""

    def command(self, paths: tuple[str, ...]) -> str:
        return desired.path_states_command(paths)

    def process(self, output: list[str]) -> dict[str, PathState]:
        # The paths come back in the output itself; those missing from it are absent (as the default says).
        listed = [line.split("|", 4)[4] for line in output if line.count("|") >= 4]
        return {path: PathState(*state) for path, state in desired.parse_path_states(listed, output).items()}


ABSENT = PathState("absent", "", "", "", "")
_registered: dict[str, list[str]] = {}
_watched: dict[str, list[str]] = {}
_states: dict[str, dict[str, PathState]] = {}


def _all_paths() -> tuple[str, ...]:
    paths = _registered.get(host.name, [])
    return (*paths, *(p for p in _watched.get(host.name, []) if p not in paths))


def _register(path: str) -> None:
    if host.name not in _registered and host.name not in _watched:
        facts.expect_later(lambda: (PathStates, {"paths": _all_paths()}))
    paths = _registered.setdefault(host.name, [])
    if path in paths:
        raise ValueError(f"{path} is managed twice in one deploy")
    paths.append(path)


def _watch(path: str) -> None:
    """A path whose state an operation reads without managing it (a user's home)."""
    if host.name not in _registered and host.name not in _watched:
        facts.expect_later(lambda: (PathStates, {"paths": _all_paths()}))
    _watched.setdefault(host.name, []).append(path)


def _state(path: str) -> PathState:
    if host.name not in _states:
        _states[host.name] = facts.fact(PathStates, paths=_all_paths())
    return _states[host.name].get(path, ABSENT)


def _mode(mode: str) -> str:
    return mode.lstrip("0") or "0"


@operation()
def _file(dest: str, content: str, mode: str, user: str, group: str):
    state = _state(dest)
    if state.kind != "regular file" or state.sha1 != hashlib.sha1(content.encode()).hexdigest():
        yield from files.put._inner(src=io.StringIO(content), dest=dest, mode=mode, user=user, group=group)
        return
    if (state.user, state.group) != (user, group):
        yield f"chown {shlex.quote(user)}:{shlex.quote(group)} {shlex.quote(dest)}"
    if state.mode != _mode(mode):
        yield f"chmod {mode} {shlex.quote(dest)}"


@operation()
def _directory(path: str, mode: str, user: str, group: str):
    state = _state(path)
    if state.kind == "absent":
        yield f"mkdir -p {shlex.quote(path)}"
    elif state.kind != "directory":
        raise ValueError(f"{path} exists and is not a directory ({state.kind})")
    if state.kind == "absent" or (state.user, state.group) != (user, group):
        yield f"chown {shlex.quote(user)}:{shlex.quote(group)} {shlex.quote(path)}"
    if state.kind == "absent" or state.mode != _mode(mode):
        yield f"chmod {mode} {shlex.quote(path)}"


def managed_file(name: str, dest: str, content: str, *, mode: str, user: str = "root", group: str = "root"):  # type: ignore[no-untyped-def]
    """A file with exactly this content, owner and mode (its content rendered on the controller)."""
    _register(dest)
    return _file(name=name, dest=dest, content=content, mode=mode, user=user, group=group)


def managed_directory(name: str, path: str, *, mode: str, user: str = "root", group: str = "root"):  # type: ignore[no-untyped-def]
    """A directory with this owner and mode (parents are created as needed)."""
    _register(path)
    return _directory(name=name, path=path, mode=mode, user=user, group=group)


@operation()
def _os_user(user: str, home: str, shell: str):
    """`server.user(user, home, shell, system=True)`, deciding as it does whether there is anything to do: the user
    exists with this home and shell, and the home is a directory of its own (`ensure_home`). Read from the run's
    snapshot while nothing changed, else from the host now, with one cheap fact each (pyinfra's own operation asks
    its Users fact: up to 0.8 s a call); when there is something to do, pyinfra's operation does it."""
    if facts.unchanged():
        account = facts.fact(facts.Accounts).get(user)
        home_state = _state(home)  # while nothing changed, the paths' states read once per run are the snapshot's
    else:
        account = host.get_fact(facts.Accounts).get(user)
        home_state = host.get_fact(PathStates, paths=(home,)).get(home, ABSENT)
    if account == (home, shell) and home_state.kind == "directory" and (home_state.user, home_state.group) == (
            user, user):
        host.noop(f"user {user} exists")
        return
    yield from server.user._inner(user=user, home=home, shell=shell, system=True, create_home=False)


def os_user(name: str, user: str, home: str, shell: str = "/usr/sbin/nologin"):  # type: ignore[no-untyped-def]
    """A system user without a login, its home a directory of its own (made if missing, not from a skeleton)."""
    facts.expect(facts.Accounts)
    _watch(home)
    return _os_user(name=name, user=user, home=home, shell=shell)


def apply_desired(items: list[Managed]) -> list[OperationMeta]:
    """Each item of an `appliance.desired` list as its operation, in order."""
    return [
        managed_directory(item.name, item.path, mode=item.mode, user=item.user, group=item.group)
        if item.content is None else
        managed_file(item.name, item.path, item.content, mode=item.mode, user=item.user, group=item.group)
        for item in items
    ]
