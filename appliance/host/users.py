"""The OS identities inside a tenant (issue 20): the agent workers, which run third-party handler code, under a user
of their own; everything else under the tenant's user.

What the agents' user (`t-<id>-agent`) may touch, and how the files say so:
- its agents dir, `2770 t-<id>-agent:t-<id>-agent` (setgid: what it creates stays in its group), files 0660 — the
  tenant's user is in that group, so the tenant's backups read (and SQLite's shared-memory files stay usable);
- the internal token, `0640 tenant-<id>:t-<id>-agent`; every other secret stays 0600 the tenant's user's;
- the tenant root and secrets dir, `0710 tenant-<id>:tenant-<id>`: the agents' user is in the tenant's group to
  pass through them (and to read the tenant's config view, 0640 root:tenant-<id>), never to list them;
- on loopback, the streams port alone (nftables owner rules, appliance.desired.firewall_rules).

`users_ok` is the deploy's fact, `ensure_users` its step (`appliance host users <tenant>`), for pyinfra and Ansible
alike; a host deployed before the split is converted by the same step (the agents' files change owner).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

from appliance.config import TenantConfig
from appliance.secrets import AGENTS_TOKEN, PASS_THROUGH_MODE, secret_access

NOLOGIN = "/usr/sbin/nologin"
AGENTS_DIR_MODE = 0o2770
AGENTS_FILE_MODE = 0o660


def _members(group: str) -> set[str]:
    try:
        return set(grp.getgrnam(group).gr_mem)
    except KeyError:
        return set()


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


def users_ok(tenant: TenantConfig) -> bool:
    """The agents' user exists as above, and every file says what it may touch."""
    agents, owner = account(tenant.agents_user), account(tenant.user)
    if agents is None or owner is None:
        return False
    if (agents.pw_dir, agents.pw_shell) != (str(tenant.agents_data), NOLOGIN):
        return False
    if tenant.agents_user not in _members(tenant.user) or tenant.user not in _members(tenant.agents_user):
        return False
    for path in (tenant.root, tenant.secrets_dir):
        if _mode_owner(path) not in (None, (PASS_THROUGH_MODE, owner.pw_uid, owner.pw_gid)):
            return False
    token = tenant.secret_path(AGENTS_TOKEN)
    if _mode_owner(token) not in (None, secret_access(tenant, AGENTS_TOKEN, owner.pw_uid, owner.pw_gid)):
        return False
    return not _tree_wrong(tenant, agents.pw_uid, agents.pw_gid)


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout).strip()}")


def ensure_users(tenant: TenantConfig) -> list[str]:
    """Make it so (idempotent); what changed, in words."""
    changes: list[str] = []
    owner = pwd.getpwnam(tenant.user)  # made by the substrate just before
    if account(tenant.agents_user) is None:
        _run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(tenant.agents_data),
             "--shell", NOLOGIN, "--groups", tenant.user, tenant.agents_user)
        changes.append(f"OS user {tenant.agents_user}")
    agents = pwd.getpwnam(tenant.agents_user)
    if (agents.pw_dir, agents.pw_shell) != (str(tenant.agents_data), NOLOGIN):
        _run("usermod", "--home", str(tenant.agents_data), "--shell", NOLOGIN, tenant.agents_user)
        changes.append(f"home and shell of {tenant.agents_user}")
    if tenant.agents_user not in _members(tenant.user):
        _run("usermod", "--append", "--groups", tenant.user, tenant.agents_user)
        changes.append(f"{tenant.agents_user} passes through {tenant.user}'s directories")
    if tenant.user not in _members(tenant.agents_user):
        _run("usermod", "--append", "--groups", tenant.agents_user, tenant.user)
        changes.append(f"{tenant.user} reads the agents' files (backups)")
    for path in (tenant.root, tenant.secrets_dir):
        if path.is_dir() and _mode_owner(path) != (PASS_THROUGH_MODE, owner.pw_uid, owner.pw_gid):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            os.chmod(path, PASS_THROUGH_MODE)
            changes.append(f"{path} {PASS_THROUGH_MODE:o}")
    token = tenant.secret_path(AGENTS_TOKEN)
    mode, uid, gid = secret_access(tenant, AGENTS_TOKEN, owner.pw_uid, owner.pw_gid)
    if token.is_file() and _mode_owner(token) != (mode, uid, gid):
        os.chown(token, uid, gid)
        os.chmod(token, mode)
        changes.append(f"{AGENTS_TOKEN} readable by {tenant.agents_user}")
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
