"""The shell steps that install the appliance on a host (system packages, its venv and sources, Node programs,
supervisord), as commands: pyinfra's bootstrap (`appliance/deploys/bootstrap.py`) and Ansible's (`roles/common`)
run these same commands, gated on the same markers, so the two tools install a host identically.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from appliance.config import HostConfig, PostgresSettings
from appliance.services import NPM_INSTALL
from appliance.supervision import SUPERVISOR_CONF, SUPERVISORD_SHUTTING_DOWN, SUPERVISORD_STOP_WAIT_S, ManagerName

# Debian's python3 builds the host venv: it is what every Debian 12 host has, whatever the controller runs.
HOST_PYTHON = "/usr/bin/python3"


def apt_packages(config: HostConfig, manager: ManagerName) -> list[str]:
    packages = [
        f"postgresql-{postgres_version(config)}",
        "postgresql-contrib",
        "pgbackrest",
        "nodejs",
        "python3-venv",
        "nftables",
        "ca-certificates",
    ]
    if manager == "supervisor":
        packages.append("supervisor")
    if config.runs_frontdoor:
        packages.append("caddy")
    return packages


def postgres_version(config: HostConfig) -> int:
    versions = {t.postgres.version for t in config.tenants} or {PostgresSettings.defaults()["version"]}
    if len(versions) != 1:
        raise ValueError(f"host {config.name}: tenants ask for different postgres versions {sorted(versions)}")
    return versions.pop()


def venv_dir(config: HostConfig) -> Path:
    return config.common.install_root / "venv"


def venv_command(config: HostConfig) -> str:
    """Create the appliance's venv (when `<venv>/pyvenv.cfg` is missing)."""
    venv = venv_dir(config)
    return f"{HOST_PYTHON} -m venv {venv} && {venv}/bin/pip install --quiet -U pip setuptools"


def host_facts_command(config: HostConfig) -> str:
    """What the host and its tenants are, as JSON (`appliance.host.facts`); `{}` before the package is installed.
    The module itself rather than `appliance host facts`: the CLI imports every command first. Isolated (-I): run
    from a checkout (a deploy to @local), `-m` would otherwise import the checkout's package, not the installed one."""
    venv = venv_dir(config)
    return f"if [ -x {venv}/bin/appliance ]; then {venv}/bin/python -I -m appliance.host.facts; else echo '{{}}'; fi"


def sources_marker(config: HostConfig) -> Path:
    """Holds the sha256 of the sources installed; a deploy ships sources whose digest differs."""
    return config.common.install_root / "src" / ".source-sha256"


def sources_upload(config: HostConfig) -> Path:
    return config.common.install_root / "src.tar.gz"


def sources_commands(config: HostConfig, digest: str, lock_digest: str) -> list[str]:
    """Install the sources uploaded to `sources_upload` into the venv (after which the marker says `digest`)."""
    q = shlex.quote
    root = q(str(config.common.install_root))
    venv = venv_dir(config)
    return [
        f"rm -rf {root}/src.new && mkdir -p {root}/src.new && tar -xzf {root}/src.tar.gz -C {root}/src.new && "
        f"rm -rf {root}/src && mv {root}/src.new {root}/src && rm -f {root}/src.tar.gz",
        # Dependencies are reinstalled only when the lock changes; our own package is an editable install of
        # src/, so roles/ stays beside it and a code change needs no pip run.
        f"if [ \"$(cat {venv}/.requirements-sha256 2>/dev/null)\" != {lock_digest} ]; then "
        f"{venv}/bin/pip install --quiet --disable-pip-version-check -r {root}/src/requirements.lock && "
        f"echo {lock_digest} > {venv}/.requirements-sha256; fi",
        f"{venv}/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e {root}/src",
        f"echo {digest} > {sources_marker(config)}",
    ]


def npm_install_command(target: Path) -> str:
    """Install a Node program's pinned dependencies (when its package files changed or its main package is
    missing from node_modules)."""
    return f"cd {target} && {NPM_INSTALL}"


SUPERVISORD_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8"


def supervisord_start_commands(stopping: bool) -> list[str]:
    """Start supervisord (where systemd is not PID 1) when it is not running; one that is shutting down must be
    gone first (it still holds its socket)."""
    wait_gone = (
        f"for i in $(seq {SUPERVISORD_STOP_WAIT_S * 10}); do "
        f"supervisorctl pid 2>&1 | grep -q {SUPERVISORD_SHUTTING_DOWN} || exit 0; sleep 0.1; done; "
        f"echo 'supervisord is still shutting down after {SUPERVISORD_STOP_WAIT_S} s: "
        "wait for it (supervisorctl status) and deploy again' >&2; exit 1"
    )
    return [
        *([wait_gone] if stopping else []),
        # In a clean environment, as systemd would start it: every program inherits supervisord's environment, and
        # the deploying shell's (a PYTHONPATH, AWS_* or PG* variables) must not reach the services.
        f"env -i {SUPERVISORD_ENV} supervisord -c {SUPERVISOR_CONF}",
        # supervisord daemonizes before its socket is up; wait so the next step can talk to it.
        "for i in $(seq 50); do supervisorctl pid >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1",
    ]


def hosts_line_command(name: str, address: str) -> str:
    """Make `name` resolve to `address` with an /etc/hosts line (where DNS does not name the vault's store).
    Rewritten in place, not renamed over: /etc/hosts is often a bind mount (containers, rehearsal hosts)."""
    return (
        f"t=$(mktemp) && grep -v '[[:space:]]{name}$' /etc/hosts > $t; echo '{address} {name}' >> $t && "
        "cat $t > /etc/hosts && rm -f $t"
    )


def resolves_command(name: str) -> str:
    """The addresses `name` resolves to, one a line (what `hosts_line_command` is needed for)."""
    return f"getent ahostsv4 {shlex.quote(name)} | awk '{{print $1}}' | sort -u"


# -- slow facts started in the background on the host, collected later ------------------------------------------
# pyinfra's StartEarly/collect_early (appliance/deploys/facts.py) and Ansible's plan and common role
# (action_plugins/) start the host's report with these same commands while the controller plans.

EARLY_DIR = "/tmp/appliance-facts."
EARLY_WAIT_S = 60


def start_early_command(commands: tuple[str, ...] | list[str]) -> str:
    """Start `commands` in the background on the host and return at once, printing a fresh directory (0700) where
    each one's output and exit status will be (`collect_early_command`)."""
    lines = [
        # Left behind only by a run that stopped before it collected them.
        f"find /tmp -maxdepth 1 -name '{Path(EARLY_DIR).name}*' -mmin +30 -exec rm -rf {{}} + 2>/dev/null",
        f'd=$(mktemp -d {EARLY_DIR}XXXXXX) || exit 1',
    ]
    lines += [f'( ( {command}\n) > "$d/{i}" 2>/dev/null; echo $? > "$d/{i}.tmp"; mv "$d/{i}.tmp" "$d/{i}.rc" )'
              f' </dev/null >/dev/null 2>&1 & echo $! > "$d/{i}.pid"' for i, command in enumerate(commands)]
    lines.append('echo "$d"')
    return "\n".join(lines)


def early_directory(output: str) -> str:
    """The directory `start_early_command` printed ('' when it could not make one)."""
    lines = output.strip().splitlines()
    directory = lines[-1].strip() if lines else ""
    return directory if directory.startswith(EARLY_DIR) else ""


def collect_early_command(directory: str, index: int, command: str) -> str:
    """The output and exit status of a command `start_early_command` started, once it ends; the command itself,
    run now, when it ended without a status (killed: a hangup of the session that started it), its directory is
    gone (a cleaner of /tmp), or it did not end in time."""
    out, rc = shlex.quote(f"{directory}/{index}"), shlex.quote(f"{directory}/{index}.rc")
    pid = shlex.quote(f"{directory}/{index}.pid")
    return (
        f"n=0; while [ ! -e {rc} ] && kill -0 \"$(cat {pid} 2>/dev/null)\" 2>/dev/null "
        f"&& [ $n -lt {EARLY_WAIT_S * 50} ]; do sleep 0.02; n=$((n+1)); done; "
        f"if [ -e {rc} ]; then cat {out}; exit \"$(cat {rc})\"; fi\n{command}"
    )
