"""`pgbackrest verify`, read properly, with each bad file named as the object it is in the bucket.

pgBackRest 2.45's verify exits 0 even when it finds invalid files: the verdict is only in its log output
(`status: error`, and one `invalid checksum '<label>/pg_data/...'` / `file missing` / `invalid size` line per
bad file). With repository bundling (repo1-bundle=y) small files share one object `<label>/bundle/<n>`, and
verify names the file inside it; the backup's manifest says which bundle holds a file, so the report names
both the file and the bucket object to look at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from appliance.backup import generations, pgbackrest
from appliance.config import TenantConfig

_BAD_FILE = re.compile(r"INFO: (invalid checksum|file missing|invalid size|invalid result) '([^']+)'")
_STATUS = re.compile(r"^\s*status: (\S+)", re.MULTILINE)
_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \S+ P\d+\s+\w+: ")
_LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
_COMPRESSION_EXT = (".lz4", ".gz", ".zst", ".bz2")


@dataclass
class BadFile:
    problem: str
    file: str  # as pgBackRest names it: "<label>/pg_data/..." or "<archive id>/<segment>..."
    object_key: str  # the object in the bucket that holds it

    def as_dict(self) -> dict[str, str]:
        return {"problem": self.problem, "file": self.file, "object": self.object_key}


@dataclass
class Verification:
    ok: bool
    status: str
    bad_files: list[BadFile] = field(default_factory=list)
    summary: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "status": self.status, "bad_files": [b.as_dict() for b in self.bad_files],
                "summary": self.summary, "seconds": round(self.seconds, 2)}


def _manifest_bundles(tenant: TenantConfig, label: str) -> dict[str, int]:
    """File name (without compression extension) -> bundle id, from a backup's manifest."""
    stanza = pgbackrest.stanza(tenant)
    result = pgbackrest.run(tenant, "repo-get", f"backup/{stanza}/{label}/backup.manifest", check=False)
    if result.returncode != 0:
        return {}
    bundles: dict[str, int] = {}
    in_files = False
    for line in result.stdout.splitlines():
        if line.startswith("["):
            in_files = line.strip() == "[target:file]"
            continue
        if in_files and "=" in line:
            name, _, value = line.partition("=")
            try:
                entry = json.loads(value)
            except ValueError:
                continue
            if isinstance(entry, dict) and "bni" in entry:
                bundles[name] = int(entry["bni"])
    return bundles


def object_key(tenant: TenantConfig, file: str, manifests: dict[str, dict[str, int]]) -> str:
    """The bucket object holding a file verify named."""
    stanza = pgbackrest.stanza(tenant)
    root = generations.repo_path(generations.current(tenant)).strip("/")
    label, _, rest = file.partition("/")
    if _LABEL.match(label):
        if label not in manifests:
            manifests[label] = _manifest_bundles(tenant, label)
        name = rest
        for ext in _COMPRESSION_EXT:
            name = name.removesuffix(ext)
        bundle_id = manifests[label].get(name)
        if bundle_id is not None:
            return f"{root}/backup/{stanza}/{label}/bundle/{bundle_id}"
        return f"{root}/backup/{stanza}/{label}/{rest}"
    # WAL: "<archive id>/<timeline+log dir>/<segment>-<sha1>.<ext>" or "<archive id>/<segment>..." forms.
    if "/" in rest and len(rest.split("/")[0]) == 16:
        return f"{root}/archive/{stanza}/{file}"
    segment = rest.split("/")[-1]
    return f"{root}/archive/{stanza}/{label}/{segment[:16]}/{segment}"


def parse(output: str) -> tuple[str, list[tuple[str, str]]]:
    statuses = _STATUS.findall(output)
    bad = [(m.group(1), m.group(2)) for m in _BAD_FILE.finditer(output)]
    return (statuses[0] if statuses else "unknown"), bad


def verify(tenant: TenantConfig, timeout_s: float | None = None) -> Verification:
    import time

    started = time.monotonic()
    # detail: the archive ranges it checked are printed too (at info, a valid repository prints nothing).
    result = pgbackrest.run(tenant, "verify", "--log-level-console=detail", check=False, timeout=timeout_s)
    status, bad = parse(result.stdout)
    if status == "unknown" and result.returncode == 0 and not bad:
        status = "ok"  # 2.45 prints a stanza status only when something is wrong
    manifests: dict[str, dict[str, int]] = {}
    bad_files = [BadFile(problem, file, object_key(tenant, file, manifests)) for problem, file in bad]
    summary_lines = [_PREFIX.sub("", line).strip() for line in result.stdout.splitlines()
                     if "status:" in line or "total files checked" in line or "invalid:" in line
                     or "missing:" in line or "wal start:" in line]
    ok = result.returncode == 0 and status == "ok" and not bad_files
    if result.returncode != 0:
        summary_lines.append(f"verify failed: {pgbackrest.error_text(result)}")
    return Verification(ok, status if result.returncode == 0 else "failed", bad_files, "; ".join(summary_lines),
                        time.monotonic() - started)
