"""The Durable Streams server for tests that run it themselves, installed from roles/streams/files as a deploy
installs it, but without a deploy.

Tests used to run the copy a deploy leaves in /opt/appliance/streams, so on a fresh machine (issue 15) every
test that starts a streams server before tests/deploy has run failed or skipped. This install lives in
/var/tmp (kept across runs; readable by the tenant users the rigs create, unlike a clone under /root), one
directory per digest of the package files, so a version bump installs afresh and an unchanged one is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

from appliance.roles import role_file
from appliance.services import STREAMS_NPM_INSTALL, STREAMS_SERVER_FILES

INSTALLS = Path("/var/tmp/appliance-tests")
SERVER_PACKAGE = Path("node_modules/@durable-streams/server/package.json")


def _digest() -> str:
    sha = hashlib.sha256()
    for name in STREAMS_SERVER_FILES:
        sha.update(name.encode() + b"\0" + role_file("streams", name).read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def streams_server_dir() -> Path:
    """A directory holding server.mjs and its node_modules, as in a deployed install_root/streams."""
    target = INSTALLS / f"streams-{_digest()}"
    if (target / SERVER_PACKAGE).is_file():
        return target
    INSTALLS.mkdir(mode=0o755, parents=True, exist_ok=True)
    INSTALLS.chmod(0o755)
    # Several pytest processes (or a bench beside the suite) may get here at once: one installs, the rest wait.
    with open(INSTALLS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / SERVER_PACKAGE).is_file():
            return target
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        for name in STREAMS_SERVER_FILES:
            (staging / name).write_bytes(role_file("streams", name).read_bytes())
        result = subprocess.run(STREAMS_NPM_INSTALL, shell=True, cwd=staging, capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"installing the streams server in {staging} failed:\n{result.stderr[-2000:]}")
        subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
        staging.rename(target)
    return target
