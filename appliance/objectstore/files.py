"""Small file helpers shared by the object store modules: atomic, mode-safe, change-reporting writes."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path


def owner_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) of `user`, or None to leave ownership as the writing process makes it."""
    if user is None:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Create `path` (and parents) and assert its mode/owner; True if anything had to change."""
    changed = False
    if not path.is_dir():
        path.mkdir(mode=mode, parents=True)
        changed = True
    st = path.stat()
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed = True
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)
        changed = True
    return changed


def write_atomic(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never a torn or over-readable one.

    The temporary file gets its final mode and owner before any byte is written, so a private key is never
    readable by others even for an instant.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp_name, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_if_changed(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Write `data` unless the file already holds exactly it; assert mode/owner either way. True on change."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != data:
        write_atomic(path, data, mode, owner)
        return True
    return fix_mode(path, mode, owner)


def fix_mode(path: Path, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Assert the mode (and owner) of an existing file; True if it had to change."""
    st = path.stat()
    changed = False
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)
        changed = True
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner)
        changed = True
    return changed
