"""WAL archiving: the archive_command the tenant's postgresql.conf carries, its health, and the recovery point.

    >>> archive_command(tenant)
    '/srv/appliance/tenants/acme/backup/pgbackrest.sh archive-push %p'

RPO here is measured, not assumed: the newest transaction the repository can bring back is the last COMMIT
in the last segment Postgres reports archived (pg_stat_archiver; Postgres marks segments archived in order,
and with archive-async pgBackRest confirms a segment only once it is in the bucket), read with pg_waldump.
If the live cluster has committed anything after it, the RPO at this moment is the age of that newest
recoverable commit; if not, nothing would be lost and the RPO is 0.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.backup import pgbackrest
from appliance.backup.errors import BackupError
from appliance.backup.paths import backup_paths
from appliance.config import TenantConfig

_COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def archive_command(tenant: TenantConfig) -> str:
    """The value of archive_command for the tenant (the template quotes it; it holds no quote or secret)."""
    wrapper = backup_paths(tenant).wrapper
    if "'" in str(wrapper) or " " in str(wrapper):
        raise BackupError(f"{wrapper} cannot be used in archive_command (quote or space in the path)")
    return f"{wrapper} archive-push %p"


def archiver_status(tenant: TenantConfig) -> dict[str, Any]:
    """pg_stat_archiver of the tenant's live cluster, and whether archiving is configured at all."""
    from appliance.pg import connect

    with connect(tenant, database="postgres", timeout=5) as conn:
        row = conn.execute(
            "select archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
            "last_failed_time, current_setting('archive_mode'), current_setting('archive_command'), "
            "pg_walfile_name(pg_current_wal_lsn()), now() from pg_stat_archiver"
        ).fetchone()
    assert row is not None
    keys = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
            "last_failed_time", "archive_mode", "archive_command", "current_wal", "now")
    status = dict(zip(keys, row, strict=True))
    status["enabled"] = status["archive_mode"] in ("on", "always") and bool(status["archive_command"])
    # The command is ours and holds no secret, but status output has no use for it.
    del status["archive_command"]
    return status


def _waldump(args: list[str], tenant: TenantConfig) -> list[dt.datetime]:
    """Commit timestamps pg_waldump finds (it stops, with an error, at the end of valid WAL: that is normal)."""
    binary = str(tenant.pg_bin("pg_waldump"))
    result = subprocess.run(
        [binary, "--rmgr=Transaction", *args], capture_output=True, text=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
    return [
        dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=dt.UTC)
        for match in _COMMIT.finditer(result.stdout)
    ]


def _previous_segment(name: str) -> str | None:
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    number = log * 0x100 + seg - 1  # 16 MiB segments: 256 per log file
    if number < 0:
        return None
    return f"{timeline:08X}{number // 0x100:08X}{number % 0x100:08X}"


def _next_segment(name: str) -> str:
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    number = log * 0x100 + seg + 1
    return f"{timeline:08X}{number // 0x100:08X}{number % 0x100:08X}"


@dataclass(frozen=True)
class RecoveryPoint:
    measured_at: dt.datetime
    last_archived_wal: str | None
    newest_recoverable_commit: dt.datetime | None
    newest_unarchived_commit: dt.datetime | None

    @property
    def rpo_s(self) -> float | None:
        """Seconds of committed work that would be lost if the host died at `measured_at`."""
        if self.newest_unarchived_commit is None:
            return 0.0
        if self.newest_recoverable_commit is None:
            return None
        return max(0.0, (self.measured_at - self.newest_recoverable_commit).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "measured_at": iso(self.measured_at), "last_archived_wal": self.last_archived_wal,
            "newest_recoverable_commit": iso(self.newest_recoverable_commit),
            "newest_unarchived_commit": iso(self.newest_unarchived_commit), "rpo_s": self.rpo_s,
        }


def newest_archived_commit(tenant: TenantConfig, segment: str | None, *, look_back_segments: int = 4,
                           ) -> dt.datetime | None:
    """Time of the last COMMIT in the repository's WAL up to `segment` (looking back a few segments when the
    last ones hold no commit, e.g. only a WAL switch); None if none is found."""
    work = backup_paths(tenant).work
    for _ in range(look_back_segments):
        if segment is None:
            return None
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            target = Path(tmp) / segment
            Path(tmp).chmod(0o777)  # the tenant's user writes the segment here; the dir itself is in 0700 work
            got = pgbackrest.run(tenant, "archive-get", "--no-archive-async", segment, str(target), check=False)
            if got.returncode != 0 or not target.is_file():
                return None
            commits = _waldump([str(target)], tenant)
        if commits:
            return commits[-1]
        segment = _previous_segment(segment)
    return None


def archive_max(info: dict[str, Any]) -> str | None:
    """The newest WAL segment in the repository for the cluster's current database id (pgbackrest info)."""
    current = (info.get("db") or [{}])[-1].get("id")
    ranges = [a for a in info.get("archive") or [] if (a.get("database") or {}).get("id") == current]
    return str(ranges[-1]["max"]) if ranges and ranges[-1].get("max") else None


def recovery_point(tenant: TenantConfig) -> RecoveryPoint:
    """Measure the RPO of the live tenant now (reads WAL only; changes nothing)."""
    status = archiver_status(tenant)
    measured_at: dt.datetime = status["now"]
    # The last archived file may be a segment, or `<segment>.<offset>.backup` (a backup's label, archived
    # right after its segment) or a timeline's `.history`: the segment part is what counts.
    last: str | None = str(status["last_archived_wal"] or "")[:24]
    if last is not None and not _SEGMENT.match(last):
        last = None
    newest_recoverable = newest_archived_commit(tenant, last)
    pg_wal = tenant.pg_data / "pg_wal"
    start = _next_segment(last) if last else status["current_wal"]
    unarchived = _waldump(["-p", str(pg_wal), start], tenant) if (pg_wal / start).exists() else []
    return RecoveryPoint(measured_at, last, newest_recoverable, unarchived[-1] if unarchived else None)
