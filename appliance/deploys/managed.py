"""Managed files and directories whose state is read with one fact per host per run.

pyinfra's `files.put`/`files.directory` ask two or three facts each, a shell round trip apiece; with a dozen
files per tenant that made a no-op redeploy cost seconds. Here every path the deploy manages is registered
while the deploy file is read, and the first operation that runs reads the state of all of them at once
(type, owner, group, mode, sha1). Each path is managed by exactly one operation, so that early read cannot
be stale for it.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files

from appliance.desired import Managed


@dataclass(frozen=True)
class PathState:
    kind: str  # "regular file", "directory", "absent", ...
    user: str
    group: str
    mode: str  # octal digits as stat prints them, e.g. "700"
    sha1: str


class PathStates(FactBase[dict[str, PathState]]):
    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (
            f"for p in {quoted}; do "
            'if [ -e "$p" ]; then s=$(stat -c "%F|%U|%G|%a" -- "$p"); h=""; '
            '[ -f "$p" ] && h=$(sha1sum < "$p" | cut -d" " -f1); echo "$s|$h|$p"; '
            'else echo "absent|||||$p"; fi; done'
        )

    def process(self, output: list[str]) -> dict[str, PathState]:
        states = {}
        for line in output:
            kind, user, group, mode, sha1, path = line.split("|", 5)
            states[path] = PathState(kind, user, group, mode, sha1)
        return states


_registered: dict[str, list[str]] = {}
_states: dict[str, dict[str, PathState]] = {}


def _register(path: str) -> None:
    paths = _registered.setdefault(host.name, [])
    if path in paths:
        raise ValueError(f"{path} is managed twice in one deploy")
    paths.append(path)


def _state(path: str) -> PathState:
    if host.name not in _states:
        _states[host.name] = host.get_fact(PathStates, paths=tuple(_registered[host.name]))
    return _states[host.name][path]


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


def apply_desired(items: list[Managed]) -> list[OperationMeta]:
    """Each item of an `appliance.desired` list as its operation, in order."""
    return [
        managed_directory(item.name, item.path, mode=item.mode, user=item.user, group=item.group)
        if item.content is None else
        managed_file(item.name, item.path, item.content, mode=item.mode, user=item.user, group=item.group)
        for item in items
    ]
