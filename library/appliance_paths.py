#!/usr/bin/python
"""Ansible module: directories and files with exactly this owner, group, mode and content.

The list comes from `appliance.desired` (through the `appliance_role` action on the controller), the same
list pyinfra applies; this module only brings the host to it, and says what it changed. Standard library only:
it runs with the host's own python3, before the appliance is installed there.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: appliance_paths
short_description: Directories and files of the appliance, exactly as appliance.desired lists them
options:
  items:
    description: [name, path, mode, user, group, content] dicts; content null means a directory.
    type: list
    elements: dict
    required: true
"""


def _ids(user: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid


def _ensure_directory(item: dict, check: bool) -> list[str]:
    path, mode = item["path"], int(item["mode"], 8)
    uid, gid = _ids(item["user"], item["group"])
    done = []
    if not os.path.lexists(path):
        done.append("created")
        if not check:
            os.makedirs(path, exist_ok=True)
    elif not os.path.isdir(path) or os.path.islink(path):
        raise ValueError(f"{path} exists and is not a directory")
    st = os.stat(path) if os.path.exists(path) else None
    if st is None or (st.st_uid, st.st_gid) != (uid, gid):
        done.append("owner")
        if not check:
            os.chown(path, uid, gid)
    if st is None or (st.st_mode & 0o7777) != mode:
        done.append("mode")
        if not check:
            os.chmod(path, mode)
    return done


def _ensure_file(item: dict, check: bool) -> list[str]:
    path, mode = item["path"], int(item["mode"], 8)
    content = item["content"].encode()
    uid, gid = _ids(item["user"], item["group"])
    current = None
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as fh:
            current = hashlib.sha1(fh.read()).hexdigest()
    if current != hashlib.sha1(content).hexdigest():
        if not check:
            # Written beside the target with its final owner and mode first, then renamed over it: readers see
            # the old file or the new one, and never a moment of wider permissions.
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        return ["content"]
    st = os.stat(path)
    done = []
    if (st.st_uid, st.st_gid) != (uid, gid):
        done.append("owner")
        if not check:
            os.chown(path, uid, gid)
    if (st.st_mode & 0o7777) != mode:
        done.append("mode")
        if not check:
            os.chmod(path, mode)
    return done


def main() -> None:
    module = AnsibleModule(argument_spec={"items": {"type": "list", "elements": "dict", "required": True}},
                           supports_check_mode=True)
    changed: dict[str, list[str]] = {}
    for item in module.params["items"]:
        try:
            done = (_ensure_directory(item, module.check_mode) if item.get("content") is None
                    else _ensure_file(item, module.check_mode))
        except (OSError, KeyError, ValueError) as exc:
            module.fail_json(msg=f"{item.get('name')}: {item.get('path')}: {exc}")
        if done:
            changed[item["path"]] = done
    module.exit_json(changed=bool(changed), changed_paths=sorted(changed), details=changed,
                     managed=[i["path"] for i in module.params["items"]])


if __name__ == "__main__":
    main()
