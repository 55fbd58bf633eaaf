"""What `appliance status` says about a tenant's backups: last full/differential, WAL archiving, last drill.

    >>> backup_status(tenant)["last_full"]["age_s"]
    >>> describe(backup_status(tenant))         # the "backup" row's detail in `appliance status`

Healthy means: the stanza is there and has a backup younger than twice the longest gap of its schedule; the
last archive attempt did not fail; no finished WAL segment has waited for archiving longer than
2 x archive_timeout + 60 s (an idle cluster archives nothing, which is fine: age alone is no alarm).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg

from appliance.backup import generations, pgbackrest
from appliance.backup.archive import archiver_status
from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.backup.schedule import expected_interval
from appliance.backup.stanza import STANZA_OK, status_of
from appliance.backup.target import backup_sets
from appliance.config import TenantConfig


def _age(moment: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - moment).total_seconds(), 1) if moment else None


def _oldest_ready(tenant: TenantConfig, now: dt.datetime) -> float | None:
    """Age of the oldest WAL segment Postgres has finished but not yet seen archived."""
    status_dir = tenant.pg_data / "pg_wal" / "archive_status"
    try:
        mtimes = [p.stat().st_mtime for p in status_dir.glob("*.ready")]
    except OSError:
        return None
    return round(now.timestamp() - min(mtimes), 1) if mtimes else 0.0


def _last_drill(tenant: TenantConfig) -> dict[str, Any] | None:
    reports = sorted(backup_paths(tenant).drills.glob("drill-*.json"))
    if not reports:
        return None
    try:
        data = json.loads(reports[-1].read_text())
    except (OSError, ValueError):
        return {"report": str(reports[-1]), "error": "unreadable"}
    return {"report": str(reports[-1]), "ok": data.get("ok"), "finished_at": data.get("finished_at"),
            "rto_s": data.get("rto_s"), "rpo_s": (data.get("rpo") or {}).get("rpo_s")}


def backup_status(tenant: TenantConfig) -> dict[str, Any]:
    """Backups and archiving of one tenant, as JSON-able data with a verdict (`healthy`, `problems`)."""
    now = dt.datetime.now(dt.UTC)
    problems: list[str] = []
    result: dict[str, Any] = {"stanza": pgbackrest.stanza(tenant), "bucket": tenant.backup_bucket}
    try:
        layout = generations.layout(tenant)
        # Which cipher generation backups go to, and the earlier ones kept for restores until it holds the
        # retention's full backups (appliance.backup.generations).
        result["cipher_generation"] = layout[0].number
        result["kept_generations"] = [g.number for g in layout[1:]]
        info = pgbackrest.info(tenant)
        code, message = status_of(info)
        result["stanza_status"] = message
        if code not in STANZA_OK:
            problems.append(f"stanza: {message}")
        sets = backup_sets(info)
        for kind in ("full", "diff", "incr"):
            of_kind = [b for b in sets if b.type == kind]
            result[f"last_{kind}"] = (
                {"label": of_kind[-1].label, "stop": of_kind[-1].stop.isoformat(), "age_s": _age(of_kind[-1].stop, now),
                 "repo_size": of_kind[-1].repo_size} if of_kind else None
            )
        result["backups"] = len(sets)
        result["repo_size"] = sum(b.repo_size for b in sets)
        if not sets:
            problems.append("no backup yet")
        else:
            allowed = 2 * expected_interval(tenant, dt.datetime.now().astimezone())
            if now - sets[-1].stop > allowed:
                problems.append(f"last backup {sets[-1].label} is older than {allowed} (twice the schedule's gap)")
    except BackupError as exc:
        problems.append(str(exc))
    try:
        archive = archiver_status(tenant)
        ready_age = _oldest_ready(tenant, now)
        last_ok, last_failed = archive["last_archived_time"], archive["last_failed_time"]
        result["archive"] = {
            "enabled": archive["enabled"], "last_archived_wal": archive["last_archived_wal"],
            "last_archived_age_s": _age(last_ok, now), "failed_count": archive["failed_count"],
            "last_failed_wal": archive["last_failed_wal"], "last_failed_age_s": _age(last_failed, now),
            "oldest_waiting_s": ready_age,
        }
        if not archive["enabled"]:
            problems.append("WAL archiving is off (archive_mode/archive_command)")
        elif last_failed and (not last_ok or last_failed > last_ok):
            problems.append(f"archiving {archive['last_failed_wal']} failed; see {tenant.logs_dir}/*archive*.log")
        limit = 2 * tenant.backup.archive_timeout_s + 60
        if ready_age is not None and ready_age > limit:
            problems.append(f"a finished WAL segment has waited {ready_age:.0f}s for archiving (limit {limit}s)")
    except (psycopg.Error, OSError) as exc:
        result["archive"] = None
        problems.append(f"postgres unreachable for archive status: {str(exc).strip().splitlines()[0]}")
    result["last_drill"] = _last_drill(tenant)
    result["healthy"] = not problems
    result["problems"] = problems
    return result


def describe(status: dict[str, Any]) -> str:
    """One line for `appliance status`."""
    if status["problems"]:
        return "; ".join(status["problems"])
    parts = []
    for kind in ("full", "diff"):
        last = status.get(f"last_{kind}")
        if last:
            parts.append(f"last {kind} {last['label']} ({_human(last['age_s'])} ago)")
    archive = status.get("archive") or {}
    if archive.get("last_archived_wal"):
        parts.append(f"WAL archived {_human(archive.get('last_archived_age_s'))} ago")
    if status.get("kept_generations"):
        parts.append(f"cipher generation {status['cipher_generation']} (generations {status['kept_generations']} "
                     "kept for restores)")
    drill = status.get("last_drill")
    if drill:
        parts.append(f"last drill {'passed' if drill.get('ok') else 'FAILED'} {drill.get('finished_at', '')[:19]}")
    return "; ".join(parts) or "ok"


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def drill_reports(tenant: TenantConfig) -> list[Path]:
    return sorted(backup_paths(tenant).drills.glob("drill-*.json"))
