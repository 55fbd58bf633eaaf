"""The OS identities inside a tenant (issue 20): one user per component (config.OWN_USER_COMPONENTS,
`t-<id>-<suffix>`), and the tenant's own user (`tenant-<id>`) for the cluster's owner: Postgres, pgBackRest and the
backup scheduler, which must share it.

What a component's user may touch, and how the files say so:
- the secrets its component reads (appliance.secrets.SECRET_READERS): each file is one reader's user's, and a
  second reader's through its own group; every other secret it cannot open. The tenant's user (Postgres and the
  backup) reads its own secrets only: bundles carry the others sealed by root (appliance.backup.capsule);
- the tenant root and secrets dir, `0710 tenant-<id>:tenant-<id>`: each component's user is in the tenant's group
  to pass through them (and to read the tenant's config view, 0640 root:tenant-<id>), never to list them;
- its own dir (OWN_DIRS), made its user's: private (0700), or shared with its group (setgid 2770, files 0660) where
  the backup reads it (the agents' state and the streams: SQLite and LMDB readers write their lock files too);
- the gateway's and the provider's front-door socket dirs (appliance.desired.tenant_upstream_dirs);
- on loopback, the ports of the components it calls (nftables owner rules, appliance.desired.PORT_CLIENTS).

The tenant's user is in the groups of the components whose dirs it backs up (their shared dirs), and no other; no
component's user is in another's.

`users_ok` is the deploy's fact, `ensure_users` its step (`appliance host users <tenant>`), for pyinfra and Ansible
alike; a host deployed before a split is converted by the same step (files change owner).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from appliance.config import TenantConfig
from appliance.secrets import (
    BACKED_UP_DIRS,
    PASS_THROUGH_MODE,
    RETIRED_SECRETS,
    assert_secret_access,
    secret_access_ok,
)

NOLOGIN = "/usr/sbin/nologin"
SHARED_DIR_MODE = 0o2770
SHARED_FILE_MODE = 0o660
PRIVATE_DIR_MODE = 0o700

# Component -> (its dir, shared with the backup through its group). The others have no dir of their own and are at
# home in the tenant root they pass through.
OWN_DIRS: dict[str, tuple[Callable[[TenantConfig], Path], bool]] = {
    "agents": (lambda t: t.agents_data, True),
    "streams": (lambda t: t.streams_data, True),
    "sync": (lambda t: t.sync_data, False),
    "identity": (lambda t: t.identity_data, False),
}


assert set(BACKED_UP_DIRS) == {c for c, (_, shared) in OWN_DIRS.items() if shared}, "secrets.BACKED_UP_DIRS"


def _members(group: str) -> set[str]:
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def own_dir_mode(component: str) -> int:
    return SHARED_DIR_MODE if OWN_DIRS[component][1] else PRIVATE_DIR_MODE


def _mode_owner(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _own_dirs(tenant: TenantConfig) -> list[str]:
    """The components of `tenant` whose dir is their user's: not the sync dir under the official image (its
    container writes it as root; the sync user runs nothing then)."""
    from appliance.config import SyncRuntime

    electric = tenant.sync.runtime is SyncRuntime.electric
    return [c for c in OWN_DIRS if c in tenant.own_users and not (c == "sync" and electric)]


def _tree_wrong(tenant: TenantConfig, component: str) -> bool:
    """Anything in the component's dir not its user's (and, shared, not group-shared): a pre-split host, all of it."""
    found = account(tenant.os_user(component))
    if found is None:
        return True
    uid, gid = found.pw_uid, found.pw_gid
    where, shared = OWN_DIRS[component]
    root = where(tenant)
    if _mode_owner(root) not in (None, (own_dir_mode(component), uid, gid)):
        return True
    for path in root.rglob("*") if root.is_dir() else ():
        st = path.lstat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            return True
        wanted = (SHARED_DIR_MODE if stat.S_ISDIR(st.st_mode) else SHARED_FILE_MODE) if shared else 0
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & wanted != wanted:
            return True
    return False


def own_tree(tenant: TenantConfig, component: str) -> None:
    """The component's dir and all in it its user's, shared with its group where the backup reads it (after a
    split or a restore)."""
    found = pwd.getpwnam(tenant.os_user(component))
    uid, gid = found.pw_uid, found.pw_gid
    where, shared = OWN_DIRS[component]
    root = where(tenant)
    root.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            os.lchown(path, uid, gid)
            continue
        os.chown(path, uid, gid)
        if shared:
            wanted = SHARED_DIR_MODE if stat.S_ISDIR(st.st_mode) else SHARED_FILE_MODE
            os.chmod(path, stat.S_IMODE(st.st_mode) | wanted)
    os.chmod(root, own_dir_mode(component))


def _home(tenant: TenantConfig, component: str) -> Path:
    """Where a component's user is at home: its own dir where it has one, else the tenant root it passes through."""
    return OWN_DIRS[component][0](tenant) if component in OWN_DIRS else tenant.root


def _backs_up(component: str) -> bool:
    """The tenant's user (the backup) is in this component's group: it reads the component's shared dir."""
    return component in OWN_DIRS and OWN_DIRS[component][1]


def _account_wrong(tenant: TenantConfig, component: str) -> bool:
    user = tenant.os_user(component)
    found = account(user)
    return (found is None or (found.pw_dir, found.pw_shell) != (str(_home(tenant, component)), NOLOGIN)
            or user not in _members(tenant.user) or (tenant.user in _members(user)) != _backs_up(component))


def users_ok(tenant: TenantConfig) -> bool:
    """Every component's own user exists as above, and every file says what it may touch."""
    owner = account(tenant.user)
    if owner is None or any(_account_wrong(tenant, c) for c in tenant.own_users):
        return False
    for path in (tenant.root, tenant.secrets_dir):
        if _mode_owner(path) not in (None, (PASS_THROUGH_MODE, owner.pw_uid, owner.pw_gid)):
            return False
    if not secret_access_ok(tenant) or any((tenant.secrets_dir / n).exists() for n in RETIRED_SECRETS):
        return False
    return not any(_tree_wrong(tenant, c) for c in _own_dirs(tenant))


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")


def _ensure_account(tenant: TenantConfig, component: str) -> list[str]:
    user, home = tenant.os_user(component), str(_home(tenant, component))
    changes = []
    if account(user) is None:
        # Its group may have outlived an earlier user of the name (a tenant destroyed before its groups went too).
        group = ["--gid", user] if group_exists(user) else ["--user-group"]
        _run("useradd", "--system", *group, "--no-create-home", "--home-dir", home, "--shell", NOLOGIN,
             "--groups", tenant.user, user)
        changes.append(f"OS user {user}")
    found = pwd.getpwnam(user)
    if (found.pw_dir, found.pw_shell) != (home, NOLOGIN):
        _run("usermod", "--home", home, "--shell", NOLOGIN, user)
        changes.append(f"home and shell of {user}")
    if user not in _members(tenant.user):
        _run("usermod", "--append", "--groups", tenant.user, user)
        changes.append(f"{user} passes through {tenant.user}'s directories")
    if _backs_up(component) and tenant.user not in _members(user):
        _run("usermod", "--append", "--groups", user, tenant.user)
        changes.append(f"{tenant.user} (the backup) reads what {user} shares")
    elif not _backs_up(component) and tenant.user in _members(user):
        # Hosts deployed before the secrets capsule: the backup read every secret through these groups.
        _run("gpasswd", "--delete", tenant.user, user)
        changes.append(f"{tenant.user} (the backup) no longer in {user}'s group")
    return changes


def ensure_users(tenant: TenantConfig) -> list[str]:
    """Make it so (idempotent); what changed, in words."""
    changes: list[str] = []
    owner = pwd.getpwnam(tenant.user)  # made by the substrate just before
    for component in tenant.own_users:
        changes.extend(_ensure_account(tenant, component))
    for path in (tenant.root, tenant.secrets_dir):
        if path.is_dir() and _mode_owner(path) != (PASS_THROUGH_MODE, owner.pw_uid, owner.pw_gid):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(path, PASS_THROUGH_MODE)
            changes.append(f"{path} {PASS_THROUGH_MODE:o}")
    changes.extend(f"{name}: readable by its readers' users only" for name in assert_secret_access(tenant))
    for name in RETIRED_SECRETS:
        if (tenant.secrets_dir / name).exists():  # not a secret_path: it is no tenant secret any more
            (tenant.secrets_dir / name).unlink()
            changes.append(f"{name} removed (no longer used)")
    for component in _own_dirs(tenant):
        if _tree_wrong(tenant, component):
            own_tree(tenant, component)
            changes.append(f"{OWN_DIRS[component][0](tenant)} is {tenant.os_user(component)}'s")
    return changes
