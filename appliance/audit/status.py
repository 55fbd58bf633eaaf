"""How far the audit trail lags behind, for `appliance status` and `appliance audit status`.

    >>> audit_status(tenant)
    {'healthy': True, 'lag_events': 12, 'lag_seconds': 1.8, 'detail': 'shipped through seq 88812 ...', ...}

Read as the `audit` role. Unhealthy when the oldest unshipped event is older than `max_lag_s` (default: the
larger of 60 s and six batch ages), when the shipper has been failing while events wait for longer than two
batch ages, or when it halted (a break in the chain, a conflicting object in the store).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from appliance.audit.db import connect_audit, event_ts, last_shipped_batch, watermark
from appliance.config import TenantConfig

HALTING_ERRORS = ("chain", "conflict")


def default_max_lag_s(tenant: TenantConfig) -> float:
    return max(60.0, 6 * float(tenant.audit.batch_max_age_s))


def audit_status(tenant: TenantConfig, *, max_lag_s: float | None = None) -> dict[str, Any]:
    """healthy, lag_events, lag_seconds, detail (plus head_seq, shipped_seq, last_batch, error, error_kind)."""
    limit = default_max_lag_s(tenant) if max_lag_s is None else max_lag_s
    try:
        with connect_audit(tenant, timeout=3) as conn:
            mark = watermark(conn)
            oldest = event_ts(conn, mark.shipped_seq + 1) if mark.head_seq > mark.shipped_seq else None
            last = last_shipped_batch(conn)
    except (psycopg.Error, OSError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"healthy": False, "lag_events": None, "lag_seconds": None, "head_seq": None, "shipped_seq": None,
                "last_batch": None, "error_kind": "database", "error": text,
                "detail": f"cannot read the audit tables: {text}"}
    now = dt.datetime.now(dt.UTC)
    lag_events = max(0, mark.head_seq - mark.shipped_seq)
    lag_seconds = round(max(0.0, (now - oldest).total_seconds()), 3) if oldest is not None else 0.0
    halted = mark.error_kind in HALTING_ERRORS
    failing = mark.error_kind is not None and lag_seconds > 2 * float(tenant.audit.batch_max_age_s)
    healthy = not halted and not failing and lag_seconds <= limit
    parts = [f"shipped through seq {mark.shipped_seq} of {mark.head_seq}"]
    parts.append(f"{lag_events} event(s) waiting, oldest {lag_seconds:.1f}s old" if lag_events else "nothing waiting")
    if last is not None and last.shipped_at is not None:
        when = last.shipped_at.astimezone(dt.UTC).isoformat(timespec="seconds")
        parts.append(f"last batch {last.object_key} at {when}")
    if mark.error_kind:
        since = mark.error_since.astimezone(dt.UTC).isoformat(timespec="seconds") if mark.error_since else "?"
        what = "HALTED" if halted else "failing"
        parts.append(f"{what} since {since} ({mark.error_kind}): {mark.error}")
    elif lag_seconds > limit:
        parts.append(f"lag above {limit:.0f}s: is the shipper (appliance-{tenant.id}-audit) running?")
    return {
        "healthy": healthy,
        "lag_events": lag_events,
        "lag_seconds": lag_seconds,
        "head_seq": mark.head_seq,
        "shipped_seq": mark.shipped_seq,
        "last_batch": last.object_key if last else None,
        "error_kind": mark.error_kind,
        "error": mark.error,
        "detail": "; ".join(parts),
    }

