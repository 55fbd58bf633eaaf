"""Facts the deploys ask of a host: what it is, never what to do.

A fact is a shell command on the host: a process start and a round trip apiece, and the Python ones (the host's
own report, `supervisorctl`) cost a second and a fifth of one. So a run asks its facts together: what the plan
needs at the top of deploy.py in one command (`plan_facts`); the host's report started right after, in the
background there (`start_early`); and what the operations will ask, declared while deploy.py is read (`expect`),
in one command whose parts run side by side on the host, taken when the first operation asks (the snapshot). An
operation reads its fact from the snapshot (`fact`) as long as no operation of this run has changed anything on
the host since it was taken; otherwise it asks the host again, as if there were no snapshot. So a no-op redeploy
asks the host three times in all, and still checks everything it checked when it asked fact by fact.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Hashable
from typing import Any, Literal, TypeVar

from pyinfra import host, state
from pyinfra.api import FactBase, operation
from pyinfra.api.host import Host

from appliance.config import HostConfig, TenantConfig
from appliance.install_steps import collect_early_command, early_directory, start_early_command
from appliance.servicespec import venv_bin
from appliance.supervision import SUPERVISORD_SHUTTING_DOWN

T = TypeVar("T")


class ApplianceFacts(FactBase[dict[str, Any]]):
    """`appliance.host.facts` on the host: JSON about the host and its tenants ({} before the package is
    installed). `command` is `install_steps.host_facts_command`, which Ansible runs too."""

    def command(self, command: str) -> str:
        return command

    def process(self, output: list[str]) -> dict[str, Any]:
        return json.loads("\n".join(output) or "{}")


class FileContent(FactBase[str]):
    """A small file's first line, or '' when it does not exist."""

    def command(self, path: str) -> str:
        return f"head -n1 {path} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class InitProcess(FactBase[str]):
    """The name of PID 1 (systemd, or something else when the host is a container or a microVM)."""

    def command(self) -> str:
        return "cat /proc/1/comm"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class DockerServerVersion(FactBase[str]):
    """The Docker engine's version when one answers ('' when only the client, or nothing, is installed)."""

    def command(self) -> str:
        return "docker version --format '{{.Server.Version}}' 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class Accounts(FactBase[dict[str, tuple[str, str]]]):
    """The host's OS users: name -> (home, shell), from one `getent passwd` (pyinfra's Users fact starts eight
    processes per account, for login times and groups none of our steps reads: up to 0.8 s a call here)."""

    def command(self) -> str:
        return "getent passwd"

    def process(self, output: list[str]) -> dict[str, tuple[str, str]]:
        accounts = {}
        for line in output:
            fields = line.split(":")
            if len(fields) >= 7:
                accounts[fields[0]] = (fields[5], fields[6])
        return accounts


class MissingDebs(FactBase[list[str]]):
    """Those of the packages that dpkg does not have installed."""

    def command(self, packages: tuple[str, ...]) -> str:
        from appliance.offline import install

        return install.apt_missing_command(list(packages))

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


SupervisordState = Literal["running", "stopping", "absent"]


class Supervisord(FactBase[SupervisordState]):
    """Whether supervisord answers, and whether it is on its way out: while it shuts down (stopping its
    programs, which can take their stopwaitsecs each) it still holds its socket, so starting another fails
    ("Another program is already listening"), yet it answers every call with SHUTDOWN_STATE."""

    def command(self) -> str:
        return "supervisorctl pid 2>&1 || true"

    def process(self, output: list[str]) -> SupervisordState:
        text = "\n".join(output)
        if output and output[0].strip().isdigit():
            return "running"
        return "stopping" if SUPERVISORD_SHUTTING_DOWN in text else "absent"


# -- asking many facts in one command ---------------------------------------------------------------------------

_MARK = "@@appliance-fact"


class Batch(FactBase[list[tuple[int, list[str]]]]):
    """Several facts' commands in one shell round trip, run side by side on the host (the slowest sets the time):
    each one's exit status and output lines, in order. Their stderr is dropped: a part that fails is asked again
    on its own (`_value`), where pyinfra reports it as usual."""

    def command(self, commands: tuple[str, ...], cleanup: tuple[str, ...] = ()) -> str:
        lines = ['d=$(mktemp -d) || exit 1']
        lines += [f'( {command}\n) > "$d/{i}" 2>/dev/null & p{i}=$!' for i, command in enumerate(commands)]
        lines += [f'wait $p{i}; echo $? > "$d/{i}.rc"' for i in range(len(commands))]
        # awk ends each part's last line (a part need not), so every mark starts a line of its own.
        lines.append(f'for i in {" ".join(str(i) for i in range(len(commands)))}; do '
                     f'echo "{_MARK} $i $(cat "$d/$i.rc")"; awk 1 "$d/$i"; done; rm -rf "$d"'
                     + "".join(f" {shlex.quote(path)}" for path in cleanup))
        return "\n".join(lines)

    def process(self, output: list[str]) -> list[tuple[int, list[str]]]:
        results: list[tuple[int, list[str]]] = []
        for line in output:
            if line.startswith(_MARK + " "):
                results.append((int(line.split()[2]), []))
            elif results:
                results[-1][1].append(line)
        return results


class StartEarly(FactBase[str]):
    """Start commands in the background on the host and return at once: each one's output and exit status go to
    a fresh directory (0700, printed), where `collect_early` finds them. For the slow facts (a Python start each),
    so they run while the controller is still reading deploy.py. (`install_steps.start_early_command`: Ansible's
    plan starts the host's report with the same command.)"""

    def command(self, commands: tuple[str, ...]) -> str:
        return start_early_command(commands)

    def process(self, output: list[str]) -> str:
        return early_directory("\n".join(output))


def collect_early(directory: str, index: int, command: str) -> str:
    """`install_steps.collect_early_command`: the output of a command `StartEarly` started, once it ends (or the
    command itself, run now, when that cannot be had)."""
    return collect_early_command(directory, index, command)


FactKey = tuple[type[FactBase[Any]], tuple[tuple[str, Hashable], ...]]


def _key(cls: type[FactBase[Any]], kwargs: dict[str, Hashable]) -> FactKey:
    return cls, tuple(sorted(kwargs.items()))


def _command(fact: FactBase[Any], key: FactKey) -> str:
    cls, kwargs = key
    requires = fact.requires_command(**dict(kwargs)) if callable(fact.requires_command) else fact.requires_command
    if requires or fact.shell_executable:
        # pyinfra wraps these in its own guard; none of those asked here needs one.
        raise ValueError(f"{cls.__name__} cannot be asked in a batch")
    command = fact.command(**dict(kwargs)) if callable(fact.command) else fact.command
    return command if isinstance(command, str) else command.get_raw_value()


def _value(target: Host, fact: FactBase[Any], key: FactKey, status: int, lines: list[str]) -> Any:
    """What `host.get_fact` returns for this output: the fact's default when it printed nothing. A part that
    failed is asked again alone, so that pyinfra reports (or tolerates) the failure exactly as it would."""
    cls, kwargs = key
    if status != 0:
        return target.get_fact(cls, **dict(kwargs))
    return fact.process(lines) if lines else fact.default()


def ask_together(target: Host, keys: list[FactKey], early: dict[FactKey, tuple[str, int]] | None = None
                 ) -> dict[FactKey, Any]:
    """Each fact's value, as `host.get_fact` gives it, from one command on the host; those in `early` from where
    `StartEarly` left them (directory, index)."""
    if not keys:
        return {}
    early = early or {}
    # One instance per fact for its command and its output: some keep what their command was given.
    instances = [cls() for cls, _ in keys]
    commands = []
    for instance, key in zip(instances, keys, strict=True):
        command = _command(instance, key)
        commands.append(collect_early(*early[key], command) if key in early else command)
    results = target.get_fact(Batch, commands=tuple(commands), cleanup=tuple(sorted({d for d, _ in early.values()})))
    if len(results) != len(keys):
        raise RuntimeError(f"host {target.name}: a batch of {len(keys)} facts answered {len(results)}")
    return {key: _value(target, f, key, status, lines)
            for f, key, (status, lines) in zip(instances, keys, results, strict=True)}


def plan_facts(*facts: tuple[type[FactBase[Any]], dict[str, Hashable]]) -> list[Any]:
    """What deploy.py needs before it can plan (at the top, while it is read), in one command."""
    keys = [_key(cls, kwargs) for cls, kwargs in facts]
    values = ask_together(host, keys)
    return [values[key] for key in keys]


# -- the snapshot of what the operations will ask -------------------------------------------------------------


class _Snapshot:
    def __init__(self) -> None:
        self.expected: list[FactKey] = []
        self.later: list[Any] = []  # callables giving a FactKey once deploy.py has been read (all paths known)
        self.early: dict[FactKey, tuple[str, int]] = {}  # started by `start_early`: (directory, index)
        self.values: dict[FactKey, Any] | None = None
        self.ops_seen = 0  # operations of this host already checked for changes since the snapshot

    def unchanged_since_taken(self, target: Host) -> bool:
        """No operation of this run changed anything on the host since the snapshot was taken (operations run
        in order; one that ran a command may have changed what the snapshot says)."""
        order = target.op_hash_order
        while self.ops_seen < len(order):
            meta = state.get_op_data_for_host(target, order[self.ops_seen]).operation_meta
            if not meta.is_complete():
                break  # the operation asking now, or later ones
            if meta.executed:
                return False
            self.ops_seen += 1
        return True


_snapshots: dict[str, _Snapshot] = {}


def _snapshot(target: Host) -> _Snapshot:
    return _snapshots.setdefault(target.name, _Snapshot())


def expect(cls: type[FactBase[Any]], **kwargs: Hashable) -> None:
    """While deploy.py is read: an operation of this run will ask this fact (`fact`); take it with the others."""
    key = _key(cls, kwargs)
    snap = _snapshot(host)
    if snap.values is not None:
        raise RuntimeError(f"{cls.__name__} expected after the snapshot of {host.name} was taken")
    if key not in snap.expected:
        snap.expected.append(key)


def expected(cls: type[FactBase[T]], **kwargs: Hashable) -> Callable[[], T]:
    """`expect` now (while deploy.py is read), and what reads it when the operation runs (`fact`)."""
    expect(cls, **kwargs)
    return lambda: fact(cls, **kwargs)


def start_early(*facts: tuple[type[FactBase[Any]], dict[str, Hashable]]) -> None:
    """`expect` these, and start them on the host now, in the background there: the slow ones (a Python start
    each) run while the controller reads the rest of deploy.py. What they say is the host before any operation
    ran, as the snapshot's other parts, and is used on the same terms."""
    snap = _snapshot(host)
    keys = [_key(cls, kwargs) for cls, kwargs in facts]
    for key in keys:
        expect(key[0], **dict(key[1]))
    commands = tuple(_command(cls(), (cls, kwargs)) for cls, kwargs in keys)
    directory = host.get_fact(StartEarly, commands=commands)
    if directory:  # else asked with the others when the snapshot is taken
        snap.early.update({key: (directory, i) for i, key in enumerate(keys)})


def expect_later(make_key: Any) -> None:
    """Like `expect`, for a fact whose arguments are complete only once deploy.py has been read: `make_key()`
    gives (fact class, kwargs) then."""
    _snapshot(host).later.append(make_key)


def unchanged() -> bool:
    """Whether the current host's snapshot still describes it (taken now if it was not yet)."""
    snap = _snapshot(host)
    if snap.values is None:
        _take(snap)
    return snap.unchanged_since_taken(host)


def _take(snap: _Snapshot) -> None:
    keys = list(snap.expected)
    for make_key in snap.later:
        cls, kwargs = make_key()
        key = _key(cls, kwargs)
        if key not in keys:
            keys.append(key)
    snap.values = ask_together(host, keys, snap.early)
    snap.ops_seen = 0


def fact(cls: type[FactBase[T]], **kwargs: Hashable) -> T:
    """`host.get_fact(cls, **kwargs)` during an operation: from the snapshot (taken by the first operation that
    asks) while nothing changed since it was taken, else from the host now. An operation asks before it yields a
    command (those here do): what it changed itself is not seen here."""
    key = _key(cls, kwargs)
    snap = _snapshot(host)
    if unchanged() and snap.values is not None and key in snap.values:
        return snap.values[key]
    return host.get_fact(cls, **kwargs)


# One `appliance host facts` per host per deploy run, when the first step that needs it runs: a Python start is
# the cost of a fact here, and each step decides from the state the host was in when the appliance steps began.
# From the snapshot when the bootstrap changed nothing (the package and host.json it reads are as they were);
# otherwise asked then, after the bootstrap installed the package. Every step is idempotent, so a step whose
# precondition an earlier step of the same run just created still does the right thing.
_memo: dict[str, dict[str, Any]] = {}


def weed_version_key(config: HostConfig) -> tuple[type[FactBase[Any]], dict[str, Hashable]]:
    """The SeaweedFS binary's version line (its install step runs when it is not the configured version)."""
    from pyinfra.facts.server import Command

    return Command, {"command": f"{venv_bin(config, 'weed')} version 2>/dev/null || true"}


def appliance_facts_key(config: HostConfig) -> tuple[type[FactBase[Any]], dict[str, Hashable]]:
    from appliance.install_steps import host_facts_command

    return ApplianceFacts, {"command": host_facts_command(config)}


def appliance_facts(config: HostConfig, tenant: str = "") -> dict[str, Any]:
    if host.name not in _memo:
        cls, kwargs = appliance_facts_key(config)
        _memo[host.name] = fact(cls, **kwargs)
    facts = _memo[host.name]
    return facts.get("tenants", {}).get(tenant, {}) if tenant else facts.get("host", {})


def host_command(config: HostConfig, *args: str) -> str:
    """`appliance host <args>` from the host's venv: the deploy's host-side steps."""
    return " ".join([venv_bin(config, "appliance"), "host", *args])


@operation()
def host_step(config: HostConfig, step: str, fact: str, current: str, tenant: TenantConfig | None = None):
    """`appliance host <step> [<tenant>]`, unless this run's host facts say `fact` already holds (then a no-op
    that says `current`)."""
    if appliance_facts(config, tenant.id if tenant else "").get(fact):
        host.noop(current)
        return
    yield host_command(config, step, *([tenant.id] if tenant else []))


def tenants_with_users(config: HostConfig) -> set[str]:
    """Tenants of this host whose OS user existed when the deploy began: their per-tenant files that host-wide
    steps write (config views, front-door socket dirs) are written there for all of them, selected by this run
    or not; a tenant new to the host gets them in its own substrate, once its user exists."""
    if host.name not in _tenants_with_users:
        raise RuntimeError("deploy.py records the host's accounts (record_accounts) before it plans")
    return _tenants_with_users[host.name]


def record_accounts(config: HostConfig, accounts: dict[str, tuple[str, str]]) -> None:
    """The accounts the host had when the deploy began (deploy.py's plan facts)."""
    from appliance.desired import settled_tenants

    _tenants_with_users[host.name] = settled_tenants(config, accounts)


_tenants_with_users: dict[str, set[str]] = {}
