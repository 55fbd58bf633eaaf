"""Backup schedules: full and differential backups at the times the settings give in cron syntax.

They run in one long-running process per tenant, `appliance backup schedule --tenant <id>`, supervised like
every other service under supervisord or systemd (`backup_service(tenant)`), so `appliance status` probes it the
same way everywhere. A run missed while the host was down is not caught up; the next one follows the schedule,
and WAL archiving keeps the recovery point within `archive_timeout` meanwhile.

Cron fields: minute hour day-of-month month day-of-week, each `*`, a number, a range `a-b`, a list `a,b` or a
step `*/n`/`a-b/n`; day-of-week 0-7 (0 and 7 are Sunday) or sun..sat. When both day fields are restricted, a
day matches either (cron's rule). Times are the host's local time, as cron reads them.

    >>> Cron("0 3 * * 1-6").next_after(dt.datetime(2026, 11, 22, 4, 0))     # a Sunday
    datetime.datetime(2026, 11, 23, 3, 0)
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from appliance.backup.errors import BackupError
from appliance.config import TenantConfig
from appliance.servicespec import ServiceSpec, appliance_service

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# (low, high, names) of each field.
_FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, _MONTH_NAMES), (0, 7, _DAY_NAMES),
)


class CronError(BackupError):
    """A schedule that is not valid cron syntax."""


def _value(text: str, low: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + (1 if low == 1 else 0)
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number")
    return int(text)


def _parse_field(text: str, low: int, high: int, names: tuple[str, ...]) -> frozenset[int] | None:
    """The values a field allows, or None for `*` (anything)."""
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        spec, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronError(f"step {step_text!r} is not a positive number")
        if spec == "*":
            start, end = low, high
        elif "-" in spec:
            first, _, last = spec.partition("-")
            start, end = _value(first, low, names), _value(last, low, names)
        else:
            start = end = _value(spec, low, names)
            if step:
                end = high
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise CronError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step or 1))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str

    def __post_init__(self) -> None:
        self.fields()  # invalid syntax fails at construction

    def fields(self) -> tuple[frozenset[int] | None, ...]:
        parts = self.expression.split()
        if len(parts) != 5:
            raise CronError(f"schedule {self.expression!r} needs 5 fields (minute hour day month weekday)")
        try:
            parsed = [_parse_field(part, low, high, names) for part, (low, high, names) in zip(parts, _FIELDS,
                                                                                                 strict=True)]
        except CronError as exc:
            raise CronError(f"schedule {self.expression!r}: {exc}") from None
        days = parsed[4]
        if days is not None and 7 in days:
            parsed[4] = frozenset((days - {7}) | {0})
        return tuple(parsed)

    def _day_matches(self, day: dt.date) -> bool:
        _, _, dom, month, dow = self.fields()
        if month is not None and day.month not in month:
            return False
        weekday = (day.weekday() + 1) % 7  # cron: 0 is Sunday
        if dom is not None and dow is not None:
            return day.day in dom or weekday in dow
        return (dom is None or day.day in dom) and (dow is None or weekday in dow)

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after `moment` (same tzinfo as `moment`)."""
        minutes, hours, *_ = self.fields()
        start = (moment + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        day = start.date()
        for _ in range(366 * 5):
            if self._day_matches(day):
                for hour in sorted(hours if hours is not None else range(24)):
                    for minute in sorted(minutes if minutes is not None else range(60)):
                        candidate = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=moment.tzinfo)
                        if candidate >= start:
                            return candidate
            day += dt.timedelta(days=1)
        raise CronError(f"schedule {self.expression!r} never fires")


BackupKind = Literal["full", "diff", "bundle"]


def next_run(tenant: TenantConfig, now: dt.datetime, *, bundles: bool = True) -> tuple[dt.datetime, BackupKind]:
    """The next scheduled run; on the same minute a full backup wins over a differential, and either over a
    bundle (every backup makes a bundle too)."""
    runs: list[tuple[dt.datetime, int, BackupKind]] = [
        (Cron(tenant.backup.full_schedule).next_after(now), 0, "full"),
        (Cron(tenant.backup.diff_schedule).next_after(now), 1, "diff"),
    ]
    # Extra side bundles between backups (streams and agents' state move on between nightly backups).
    if bundles and tenant.backup.bundle_schedule:
        runs.append((Cron(tenant.backup.bundle_schedule).next_after(now), 2, "bundle"))
    when, _, kind = min(runs)
    return when, kind


def expected_interval(tenant: TenantConfig, now: dt.datetime) -> dt.timedelta:
    """The longest gap between two scheduled backups over the coming two weeks (for staleness checks)."""
    moment, longest = now, dt.timedelta(0)
    previous: dt.datetime | None = None
    horizon = now + dt.timedelta(days=14)
    while moment < horizon:
        moment, _ = next_run(tenant, moment, bundles=False)
        if previous is not None:
            longest = max(longest, moment - previous)
        previous = moment
    return longest or dt.timedelta(days=7)


# -- the supervised scheduler ---------------------------------------------------------------------------------
def backup_service(tenant: TenantConfig) -> ServiceSpec:
    """The scheduler as a service of either manager; it has no port: `backup_status` is its probe.
    A backup in progress is aborted on stop and resumed by pgBackRest on the next run."""
    return appliance_service(tenant, "backup", "schedule", stop_wait_s=30)


Runner = Callable[[BackupKind], str]
Clock = Callable[[], dt.datetime]


def _local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def run_schedule(
    load_tenant: Callable[[], TenantConfig], run_backup: Runner, has_backup: Callable[[], bool],
    *, log: Callable[[str], None] = print, stop: threading.Event | None = None, clock: Clock = _local_now,
    wait: Callable[[float], bool] | None = None, retry_s: float = 600,
) -> None:
    """Run backups on schedule until `stop` is set (or SIGTERM/SIGINT arrive, in the main thread).

    The tenant config is re-read before each wait so that a redeploy's new schedule applies without a restart.
    A tenant without any backup gets a full one at once. A failed backup is logged and retried once after
    `retry_s`, then the schedule goes on. `clock` and `wait` (seconds -> True once stopped) are the real ones
    unless a test simulates time."""
    stop = stop or threading.Event()
    wait = wait or stop.wait
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    pending: BackupKind | None = None if has_backup() else "full"
    if pending:
        log("no backup yet: taking a full backup now")
    while not stop.is_set():
        if pending is None:
            tenant = load_tenant()
            when, kind = next_run(tenant, clock())
            log(f"next: {kind} backup at {when.isoformat(timespec='minutes')}")
            # Short waits, re-reading the clock: a suspended host or a clock step must not skip a backup.
            while not stop.is_set() and (remaining := (when - clock()).total_seconds()) > 0:
                wait(min(30.0, remaining))
            if stop.is_set():
                break
            pending = kind
        kind = pending
        pending = None
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                log(run_backup(kind))
                break
            except Exception as exc:  # a scheduler that dies on one bad night stops backing up for good
                log(f"{kind} backup failed after {time.monotonic() - started:.0f}s: {exc}")
                if attempt == 1 and not wait(retry_s):
                    log(f"retrying the {kind} backup")
                    continue
                break
    log("scheduler stopped")
