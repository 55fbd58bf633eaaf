"""Node programs shipped in roles/<role>/files for tests that run them themselves (the Durable Streams server,
the embedded OIDC provider), installed as a deploy installs them, but without a deploy.

Tests used to run the copy a deploy leaves in /opt/appliance/streams, so on a fresh machine (issue 15) every
test that starts a streams server before tests/deploy has run failed or skipped. These installs live in
/var/tmp (kept across runs; readable by the tenant users the rigs create, unlike a clone under /root), one
directory per digest of the program's files, so a version bump installs afresh and an unchanged one is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance.roles import role_file
from appliance.services import NPM_INSTALL, STREAMS_SERVER_FILES

INSTALLS = Path("/var/tmp/appliance-tests")


def _digest(role: str, names: Sequence[str]) -> str:
    sha = hashlib.sha256()
    for name in names:
        sha.update(name.encode() + b"\0" + role_file(role, name).read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def node_program_dir(role: str, names: Sequence[str], main_package: str) -> Path:
    """A directory holding `names` of roles/<role>/files and their node_modules (`npm install` as the deploy runs
    it), shared by every test process and reused while the files are unchanged."""
    target = INSTALLS / f"{role}-{_digest(role, names)}"
    installed = Path("node_modules") / main_package / "package.json"
    if (target / installed).is_file():
        return target
    INSTALLS.mkdir(mode=0o755, parents=True, exist_ok=True)
    INSTALLS.chmod(0o755)
    # Several pytest processes (or a bench beside the suite) may get here at once: one installs, the rest wait.
    with open(INSTALLS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / installed).is_file():
            return target
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        for name in names:
            (staging / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            (staging / name).write_bytes(role_file(role, name).read_bytes())
        result = subprocess.run(NPM_INSTALL, shell=True, cwd=staging, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"installing roles/{role}/files in {staging} failed:\n{result.stderr[-2000:]}")
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        staging.rename(target)
    return target


def streams_server_dir() -> Path:
    """A directory holding server.mjs and its node_modules, as in a deployed install_root/streams."""
    return node_program_dir("streams", STREAMS_SERVER_FILES, "@durable-streams/server")
