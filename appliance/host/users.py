"""The OS identities inside a tenant (issue 20): the components with a user of their own (config.OWN_USER_COMPONENTS:
the agent workers, which run third-party handler code, and the gateway, which faces every caller), and the tenant's
user for the rest (Postgres and pgBackRest must share the cluster's owner).

What a component's user (`t-<id>-<suffix>`) may touch, and how the files say so:
- the secrets its component reads (appliance.secrets.SECRET_READERS): a file is its first reader's user's, 0600,
  or 0640 with the second reader's own group; every other secret it cannot open;
- the tenant root and secrets dir, `0710 tenant-<id>:tenant-<id>`: each such user is in the tenant's group to pass
  through them (and to read the tenant's config view, 0640 root:tenant-<id>), never to list them;
- its own places: the agents dir, `2770 t-<id>-agent:t-<id>-agent` (setgid: what it creates stays in its group),
  files 0660 - the tenant's user is in that group, so the tenant's backups read (and SQLite's shared-memory files
  stay usable); the gateway's front-door socket dir (appliance.desired.tenant_upstream_dirs);
- on loopback, the ports of the components it calls (nftables owner rules, appliance.desired.PORT_CLIENTS).

`users_ok` is the deploy's fact, `ensure_users` its step (`appliance host users <tenant>`), for pyinfra and Ansible
alike; a host deployed before a split is converted by the same step (files change owner).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

from appliance.config import TenantConfig
from appliance.secrets import PASS_THROUGH_MODE, RETIRED_SECRETS, assert_secret_access, secret_access_ok

NOLOGIN = "/usr/sbin/nologin"
AGENTS_DIR_MODE = 0o2770
AGENTS_FILE_MODE = 0o660


def _members(group: str) -> set[str]:
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


def _group_exists(name: str) -> bool:
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


def agents_ids(tenant: TenantConfig) -> tuple[int, int]:
    account = pwd.getpwnam(tenant.agents_user)
    return account.pw_uid, account.pw_gid


def _mode_owner(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _tree_wrong(tenant: TenantConfig, uid: int, gid: int) -> bool:
    """Anything under the agents dir not the agents' own, group-shared as above (a pre-split host: all of it)."""
    root = tenant.agents_data
    if _mode_owner(root) not in (None, (AGENTS_DIR_MODE, uid, gid)):
        return True
    for path in root.rglob("*") if root.is_dir() else ():
        st = path.lstat()
        wanted = AGENTS_DIR_MODE if stat.S_ISDIR(st.st_mode) else AGENTS_FILE_MODE
        if (st.st_uid, st.st_gid) != (uid, gid) or stat.S_IMODE(st.st_mode) & wanted != wanted:
            return True
    return False


def _home(tenant: TenantConfig, component: str) -> Path:
    """Where a component's user is at home: its own dir where it has one, else the tenant root it passes through."""
    return tenant.agents_data if component == "agents" else tenant.root


def _account_wrong(tenant: TenantConfig, component: str) -> bool:
    user = tenant.os_user(component)
    found = account(user)
    return (found is None or (found.pw_dir, found.pw_shell) != (str(_home(tenant, component)), NOLOGIN)
            or user not in _members(tenant.user))


def users_ok(tenant: TenantConfig) -> bool:
    """Every component's own user exists as above, and every file says what it may touch."""
    owner = account(tenant.user)
    if owner is None or any(_account_wrong(tenant, c) for c in tenant.own_users):
        return False
    if tenant.user not in _members(tenant.agents_user):
        return False
    for path in (tenant.root, tenant.secrets_dir):
        if _mode_owner(path) not in (None, (PASS_THROUGH_MODE, owner.pw_uid, owner.pw_gid)):
            return False
    if not secret_access_ok(tenant) or any((tenant.secrets_dir / n).exists() for n in RETIRED_SECRETS):
        return False
    agents = pwd.getpwnam(tenant.agents_user)
    return not _tree_wrong(tenant, agents.pw_uid, agents.pw_gid)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")


def _ensure_account(tenant: TenantConfig, component: str) -> list[str]:
    user, home = tenant.os_user(component), str(_home(tenant, component))
    changes = []
    if account(user) is None:
        # Its group may have outlived an earlier user of the name (a tenant destroyed before its groups went too).
        group = ["--gid", user] if _group_exists(user) else ["--user-group"]
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
    return changes


def ensure_users(tenant: TenantConfig) -> list[str]:
    """Make it so (idempotent); what changed, in words."""
    changes: list[str] = []
    owner = pwd.getpwnam(tenant.user)  # made by the substrate just before
    for component in tenant.own_users:
        changes.extend(_ensure_account(tenant, component))
    if tenant.user not in _members(tenant.agents_user):
        _run("usermod", "--append", "--groups", tenant.agents_user, tenant.user)
        changes.append(f"{tenant.user} reads the agents' files (backups)")
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
    agents = pwd.getpwnam(tenant.agents_user)
    if _tree_wrong(tenant, agents.pw_uid, agents.pw_gid):
        own_agents_tree(tenant)
        changes.append(f"{tenant.agents_data} is {tenant.agents_user}'s")
    return changes


def own_agents_tree(tenant: TenantConfig) -> None:
    """The agents dir and all in it the agents' user's, shared with its group (after a split or a restore)."""
    uid, gid = agents_ids(tenant)
    root = tenant.agents_data
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            os.lchown(path, uid, gid)
            continue
        os.chown(path, uid, gid)
        wanted = AGENTS_DIR_MODE if stat.S_ISDIR(st.st_mode) else AGENTS_FILE_MODE
        os.chmod(path, stat.S_IMODE(st.st_mode) | wanted)
