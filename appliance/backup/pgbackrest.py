"""pgBackRest for one tenant: its config file and secret-reading wrapper, and running commands through them.

Facts about Debian 12's pgBackRest 2.45 that shape this module:
- S3 is spoken over HTTPS only (plain HTTP arrived in 2.58), verified with `repo1-storage-ca-file`.
- The certificate check matches the endpoint against DNS names only: an IP endpoint fails with "unable to find
  hostname '127.0.0.1' in certificate common name or subject alternative names" although the store's
  certificate carries that IP as a SAN. The embedded store's certificate always carries `localhost` too, so a
  loopback endpoint is reached as `localhost`; any other store needs a DNS name.
- Options can come from the environment (`PGBACKREST_REPO1_S3_KEY`, ...). The wrapper sets the secret ones
  from the tenant's secret files at each run, so no secret is on a command line or in a rendered file.
- A repository it cannot connect to is retried for four times `io-timeout` (4 minutes by default) before it
  answers. `info` (facts, status, scheduling) first checks that the store accepts a connection at all: a host
  whose store is down (rebooted, or not started yet by this deploy) hears so at once.
- `restore` writes its own `restore_command` into postgresql.auto.conf; it would call pgbackrest without the
  wrapper (so without keys), hence every restore passes `--recovery-option=restore_command=...` itself.

    >>> changes = ensure_files(host, tenant)           # ["pgbackrest.conf", "pgbackrest.sh", ...] or []
    >>> run(tenant, "info", "--output=json").stdout
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import socket
import subprocess
from typing import Any
from urllib.parse import urlsplit

from appliance.backup import generations
from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.config import BACKUP_S3_KEYS, DB_SUPERUSER, HostConfig, TenantConfig
from appliance.objectstore.files import ensure_dir, write_if_changed
from appliance.roles import render

PGBACKREST = "/usr/bin/pgbackrest"
CIPHER_TYPE = "aes-256-cbc"
# lz4 keeps a 2-core host's backup and restore bound by I/O rather than by compression.
COMPRESS_TYPE = "lz4"
COMPRESS_LEVEL = 1
PROCESS_MAX = 2
# The commands that see the kept earlier repository generations besides the current one (appliance.backup.
# generations): the ones that read. Backups, archive-push and expiry write the current generation alone.
READ_COMMANDS = ("restore", "archive-get", "info")
# How long `info` waits for the store to accept a connection before answering that it is unreachable.
REPO_CONNECT_TIMEOUT_S = 3.0
# pgBackRest's whole environment besides what the wrapper adds: nothing of the caller's leaks in (a PGBACKREST_*
# or PG* variable would silently change what it does).
_SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def stanza(tenant: TenantConfig) -> str:
    """One stanza per tenant, in a bucket of its own: the tenant id is unambiguous."""
    return tenant.id


def repo_endpoint(host: HostConfig) -> tuple[str, int]:
    """(host name, port) pgBackRest connects to; see the module notes on why an IP becomes a name."""
    parts = urlsplit(host.s3_endpoint)
    if parts.scheme != "https" or not parts.hostname:
        raise BackupError(f"object store endpoint {host.s3_endpoint} is not https://: pgBackRest 2.45 needs TLS")
    port = parts.port or 443
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return parts.hostname, port
    if address.is_loopback:
        return "localhost", port
    raise BackupError(
        f"object store endpoint {host.s3_endpoint} is an IP address; pgBackRest 2.45 verifies the store's "
        "certificate by DNS name only: reach the store by a name its certificate carries"
    )


def ca_file(host: HostConfig) -> str:
    if host.objectstore.mode == "embedded":
        return str(host.ca_cert)
    return host.objectstore.ca_file


def render_config(host: HostConfig, tenant: TenantConfig) -> str:
    paths = backup_paths(tenant)
    endpoint_host, endpoint_port = repo_endpoint(host)
    return render(
        "backup", "pgbackrest.conf.j2", tenant=tenant, wrapper=paths.wrapper,
        endpoint_host=endpoint_host, endpoint_port=endpoint_port, region=host.objectstore.region,
        ca_file=ca_file(host), generations=generations.layout(tenant), read_commands=READ_COMMANDS,
        cipher_type=CIPHER_TYPE, compress_type=COMPRESS_TYPE,
        compress_level=COMPRESS_LEVEL, process_max=PROCESS_MAX, spool_path=paths.spool, lock_path=paths.lock,
        log_path=paths.logs, stanza=stanza(tenant), superuser=DB_SUPERUSER,
    )


def render_wrapper(tenant: TenantConfig) -> str:
    paths = backup_paths(tenant)
    for path in (tenant.secrets_dir, paths.config):
        # The wrapper quotes these with single quotes, and postgresql.conf quotes archive_command the same way.
        if "'" in str(path):
            raise BackupError(f"path {path} contains a single quote; move the tenants root")
    return render(
        "backup", "pgbackrest.sh.j2", tenant=tenant, pgbackrest=PGBACKREST, config=paths.config,
        stanza=stanza(tenant), s3_keys=BACKUP_S3_KEYS, generations=generations.layout(tenant),
    )


def tenant_ids(tenant: TenantConfig) -> tuple[int, int]:
    try:
        user = pwd.getpwnam(tenant.user)
    except KeyError:
        raise BackupError(f"OS user {tenant.user} of tenant {tenant.id} does not exist") from None
    return user.pw_uid, user.pw_gid


def ensure_files(host: HostConfig, tenant: TenantConfig) -> list[str]:
    """The tenant's pgBackRest config, wrapper and working dirs; returns what changed ([] when nothing)."""
    paths = backup_paths(tenant)
    owner = tenant_ids(tenant)
    changes = []
    for directory in (tenant.backup_dir, paths.spool, paths.work, paths.drills, tenant.run_dir, paths.lock,
                      tenant.logs_dir):
        if ensure_dir(directory, 0o700, owner):
            changes.append(f"dir {directory}")
    if write_if_changed(paths.config, render_config(host, tenant).encode(), 0o600, owner):
        changes.append(str(paths.config))
    if write_if_changed(paths.wrapper, render_wrapper(tenant).encode(), 0o700, owner):
        changes.append(str(paths.wrapper))
    return changes


def as_tenant(tenant: TenantConfig) -> dict[str, Any]:
    """subprocess arguments that run a child as the tenant's OS user (nothing to switch when already it)."""
    uid, gid = tenant_ids(tenant)
    if os.geteuid() == uid:
        return {}
    # Its own groups too, as a login would have them: it reads what the components share with it through theirs
    # (every component's secrets, which its backups hold; appliance.host.users), and none of root's.
    return {"user": uid, "group": gid, "extra_groups": os.getgrouplist(tenant.user, gid)}


def run(
    tenant: TenantConfig, command: str, *options: str, check: bool = True, timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `pgbackrest <command> <options>` for the tenant, through its wrapper, as its OS user."""
    wrapper = backup_paths(tenant).wrapper
    if not wrapper.is_file():
        raise BackupError(
            f"{wrapper} is missing: the tenant's backup is not set up (deploy, or `appliance backup setup "
            f"{tenant.id}`)"
        )
    argv = [str(wrapper), command, *options]
    try:
        result = subprocess.run(
            # errors="replace": a repository encrypted with another passphrase makes pgBackRest echo binary; the
            # answer must still be an error message, never a UnicodeDecodeError.
            argv, capture_output=True, text=True, errors="replace", env=_SAFE_ENV, cwd="/", timeout=timeout,
            **as_tenant(tenant),
        )
    except subprocess.TimeoutExpired:
        raise BackupError(f"pgbackrest {command} for {tenant.id} did not finish within {timeout:.0f}s") from None
    if check and result.returncode != 0:
        raise BackupError(f"pgbackrest {command} for {tenant.id} failed: {error_text(result)}")
    return result


def error_text(result: subprocess.CompletedProcess[str], lines: int = 6) -> str:
    """The end of pgBackRest's own messages (they name options and files, never option values)."""
    text = "\n".join(part.strip() for part in (result.stderr, result.stdout) if part and part.strip())
    tail = text.splitlines()[-lines:]
    return "; ".join(tail) if tail else f"exit code {result.returncode}"


def repo_address(tenant: TenantConfig) -> tuple[str, int] | None:
    """(host, port) of the repository in the tenant's rendered config; None when the config has none."""
    try:
        return address_in(backup_paths(tenant).config.read_text())
    except OSError:
        return None


def address_in(config_text: str) -> tuple[str, int] | None:
    """(host, port) of repo1 in a pgBackRest config's text."""
    options: dict[str, str] = {}
    for line in config_text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            options[key.strip()] = value.strip()
    if "repo1-s3-endpoint" not in options:
        return None
    return options["repo1-s3-endpoint"], int(options.get("repo1-storage-port", "443"))


def check_repo_reachable(tenant: TenantConfig) -> None:
    """Raise BackupError at once when the repository's store accepts no connection (see the module notes)."""
    address = repo_address(tenant)
    if address is None:
        return
    try:
        socket.create_connection(address, timeout=REPO_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BackupError(
            f"the object store of {tenant.id}'s backups at {address[0]}:{address[1]} is unreachable "
            f"({exc.strerror or exc})"
        ) from None


def info(tenant: TenantConfig, *, every_generation: bool = False) -> dict[str, Any]:
    """`pgbackrest info` of the tenant's stanza as a dict (status, backups, archive ranges): of the current
    repository generation, or with `every_generation` of the kept earlier ones too (each backup then names its
    repository, `database.repo-key`)."""
    check_repo_reachable(tenant)
    result = run(tenant, "info", "--output=json", *(() if every_generation else ("--repo=1",)))
    data = json.loads(result.stdout or "[]")
    if not data:
        raise BackupError(f"pgbackrest info for {tenant.id} returned nothing")
    stanza_info: dict[str, Any] = data[0]
    return stanza_info


def restore_command(tenant: TenantConfig, *extra: str) -> str:
    """The restore_command a restored cluster fetches WAL with: through the wrapper, so with the keys.

    pgBackRest writes it between single quotes into postgresql.auto.conf without escaping, so no part of it
    may hold a quote or a space (paths are checked in `render_wrapper`; `extra` are plain --option=value)."""
    wrapper = backup_paths(tenant).wrapper
    parts = [str(wrapper), *extra, "archive-get", "%f", '"%p"']
    if any("'" in part or " " in part for part in parts[:-1]):
        raise BackupError(f"restore_command for {tenant.id} would need quoting: {parts[:-3]}")
    return " ".join(parts)
