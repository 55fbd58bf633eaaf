"""What a restore aims at: the latest state, or a point in time; and the backup set that can reach it.

    >>> at = parse_time("2026-11-22T03:00:00Z")
    >>> chosen = choose_set(pgbackrest.info(tenant), at)   # BadRequest if no backup completed before `at`
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from appliance.backup.errors import BadRequest

STOP_SLACK = dt.timedelta(seconds=1)


def parse_time(text: str, option: str = "--time") -> dt.datetime:
    """An ISO 8601 time; one without a zone is UTC (what the appliance's logs, reports and audit trail use).
    The one parser of operators' times (`restore --time`, `audit export --since`)."""
    raw = text.strip()
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise BadRequest(
            f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-11-22T03:00:00Z or 2026-11-22 03:00:00+01:00)"
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def pg_time(value: dt.datetime) -> str:
    """The form recovery_target_time takes without ambiguity: UTC, microseconds, explicit offset."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


@dataclass(frozen=True)
class BackupSet:
    label: str
    type: str
    start: dt.datetime
    stop: dt.datetime
    size: int  # database size
    repo_size: int  # bytes in the repository (compressed)
    repo_delta: int
    wal_start: str | None
    wal_stop: str | None
    error: bool
    # pgBackRest's repository index holding it: 1 for the current cipher generation (appliance.backup.generations).
    repo: int = 1

    @classmethod
    def from_info(cls, entry: dict[str, Any]) -> BackupSet:
        stamp = entry.get("timestamp") or {}
        info = entry.get("info") or {}
        repo = info.get("repository") or {}
        archive = entry.get("archive") or {}
        database = entry.get("database") or {}
        return cls(
            label=str(entry["label"]), type=str(entry.get("type", "?")),
            start=dt.datetime.fromtimestamp(int(stamp.get("start", 0)), dt.UTC),
            stop=dt.datetime.fromtimestamp(int(stamp.get("stop", 0)), dt.UTC),
            size=int(info.get("size", 0)), repo_size=int(repo.get("size", 0)), repo_delta=int(repo.get("delta", 0)),
            wal_start=archive.get("start"), wal_stop=archive.get("stop"), error=bool(entry.get("error", False)),
            repo=int(database.get("repo-key", 1)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "type": self.type, "start": self.start.isoformat(), "stop": self.stop.isoformat(),
            "size": self.size, "repo_size": self.repo_size, "repo_delta": self.repo_delta,
            "wal_start": self.wal_start, "wal_stop": self.wal_stop, "repo": self.repo,
        }


def backup_sets(info: dict[str, Any]) -> list[BackupSet]:
    """Backup sets of a stanza, oldest first."""
    return sorted((BackupSet.from_info(entry) for entry in info.get("backup") or []), key=lambda b: b.stop)


def choose_set(info: dict[str, Any], at: dt.datetime | None, *, now: dt.datetime | None = None) -> BackupSet:
    """The newest backup set that can reach `at` (None: the latest state); BadRequest when none can."""
    sets = backup_sets(info)
    tenant = info.get("name", "?")
    if not sets:
        raise BadRequest(f"tenant {tenant} has no backup yet: run `appliance backup {tenant} --full` first")
    if at is None:
        return sets[-1]
    now = now or dt.datetime.now(dt.UTC)
    if at > now:
        raise BadRequest(f"--time {at.isoformat()} is in the future (now is {now.isoformat(timespec='seconds')})")
    # A backup is consistent only from its stop on; pgBackRest reports stops in whole seconds (rounded down).
    usable = [b for b in sets if b.stop + STOP_SLACK <= at]
    if not usable:
        raise BadRequest(
            f"--time {at.isoformat()} is before the first backup of tenant {tenant} completed; the earliest "
            f"point that can be restored is {(sets[0].stop + STOP_SLACK).isoformat()}"
        )
    return usable[-1]
