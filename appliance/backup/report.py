"""Drill reports: the JSON document scripts keep, and the summary an operator reads."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    skipped: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "skipped": self.skipped, "detail": self.detail, **self.data}


@dataclass
class DrillReport:
    tenant: str
    drill_id: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    target_time: dt.datetime | None = None
    backup: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    rto_s: float | None = None
    rpo: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok or c.skipped for c in self.checks)

    def fail(self, name: str, detail: str, **data: Any) -> None:
        self.checks.append(Check(name, False, detail, data=data))

    def passed(self, name: str, detail: str, **data: Any) -> None:
        self.checks.append(Check(name, True, detail, data=data))

    def skip(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, True, detail, skipped=True))

    @property
    def seconds(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "drill_id": self.drill_id, "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": round(self.seconds, 2) if self.seconds is not None else None,
            "target_time": self.target_time.isoformat() if self.target_time else None,
            "backup": self.backup, "bundle": self.bundle,
            "rto_s": round(self.rto_s, 2) if self.rto_s is not None else None, "rpo": self.rpo,
            "checks": [c.as_dict() for c in self.checks], "tables": self.tables, "streams": self.streams,
            "scratch": self.scratch,
        }

    def summary(self) -> str:
        verdict = "DRILL PASSED" if self.ok else "DRILL FAILED"
        lines = [f"{verdict}: tenant {self.tenant} ({self.drill_id})"]
        if self.target_time:
            backup = f"backup {self.backup.get('label', '?')} ({self.backup.get('type', '?')})"
            lines.append(f"  restore point  {self.target_time.isoformat()} from {backup}, "
                         f"bundle {self.bundle.get('object', '?')}")
        lines.append(f"  RTO            {_seconds(self.rto_s)} to a healthy scratch tenant")
        rpo = self.rpo.get("rpo_s")
        newest = self.rpo.get("newest_recoverable_commit") or "none"
        lines.append(f"  RPO            {_seconds(rpo)} (newest recoverable commit {newest}, last archived WAL "
                     f"{self.rpo.get('last_archived_wal') or 'none'})")
        for check in self.checks:
            mark = "skip" if check.skipped else ("ok  " if check.ok else "FAIL")
            lines.append(f"  {mark} {check.name:<18} {check.detail}")
        if self.seconds is not None:
            lines.append(f"  drill took {self.seconds:.1f}s; scratch instance "
                         f"{'removed' if self.scratch.get('removed') else 'LEFT at ' + str(self.scratch.get('root'))}")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.as_dict(), fh, indent=2)
            fh.write("\n")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}s"
