"""`appliance audit export`: the events since a moment, as canonical JSONL an auditor can verify alone.

Each exported line is exactly a line of a shipped batch (appliance/audit/batch.py): the event, its `prev_hash`
and its `hash`. An auditor recomputes every hash with the recipe in appliance/audit/canonical.py and checks that
each line's prev_hash is the previous line's hash; the first line's prev_hash ties the export to the events
before it (compare it with the previous batch's manifest `last_hash`, or ask for an earlier --since).

By default the lines come from the store (the shipped, locked copy, each batch checked as `verify` does);
`--from db` exports from Postgres instead, including events not shipped yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import psycopg

from appliance.audit.canonical import canonical_json_unchecked, format_timestamp
from appliance.audit.verify import Problem, Verifier, line_hash, parse_line

ExportSource = Literal["s3", "db"]


@dataclass
class ExportResult:
    source: str
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_prev_hash: str | None = None
    last_hash: str | None = None
    batches: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    not_shipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.count:
            text = f"no events in that window (from {self.source})"
        else:
            text = (f"exported {self.count} events, seq {self.first_seq}-{self.last_seq} (from {self.source}"
                    + (f", {len(self.batches)} batches" if self.batches else "") + "); chain "
                    + ("verified" if self.ok else "BROKEN") + f"; first prev_hash {self.first_prev_hash}; "
                    f"last hash {self.last_hash}")
        for problem in self.problems[:10]:
            text += f"\n  {problem.line()}"
        if self.not_shipped:
            text += f"\nnote: {self.not_shipped} later event(s) are not shipped yet (use --from db to include them)"
        return text


def _window(since: dt.datetime, until: dt.datetime | None) -> tuple[str, str | None]:
    # Canonical timestamps compare as strings in time order: fixed width, UTC, zero-padded.
    return format_timestamp(since), format_timestamp(until) if until else None


def _s3_lines(host: Any, tenant: Any, since: str, result: ExportResult) -> Iterator[bytes]:
    from appliance.audit.store import audit_client

    verifier = Verifier(tenant.id, tenant.audit_bucket, audit_client(host, tenant), None, "s3")
    for check in verifier.s3_batches(since_day=since[:10]):
        if check.jsonl is None:
            continue
        used = False
        for raw in check.jsonl.split(b"\n"):
            if raw:
                used = True
                yield raw
        if used:
            result.batches.append(check.key)
    result.problems.extend(verifier.report.sorted_problems())


def _db_lines(tenant: Any, since: str, result: ExportResult) -> Iterator[bytes]:
    from appliance.audit.db import connect_audit, stream_events

    with connect_audit(tenant) as conn:
        row = conn.execute("SELECT min(seq) FROM audit.events WHERE ts >= %s",
                           (dt.datetime.fromisoformat(since.replace("Z", "+00:00")),)).fetchone()
        if row is None or row[0] is None:
            return
        for event in stream_events(conn, int(row[0]) - 1):
            # Written as the line it must be; export_events then checks it like any shipped line.
            yield canonical_json_unchecked(event)


def export_events(host: Any, tenant: Any, out: IO[bytes], since: dt.datetime, until: dt.datetime | None = None,
                  source: ExportSource = "s3") -> ExportResult:
    """Write the events with since <= ts < until to `out`, one canonical line each; check them as they go."""
    start, end = _window(since, until)
    result = ExportResult(source)
    lines = _s3_lines(host, tenant, start, result) if source == "s3" else _db_lines(tenant, start, result)
    expected_seq: int | None = None
    expected_prev: str | None = None
    for raw in lines:
        try:
            event = parse_line(raw)
        except ValueError as exc:
            result.problems.append(Problem(None, source, "format", f"a line cannot be read: {exc}"))
            continue
        if event["ts"] < start:
            continue
        if end is not None and event["ts"] >= end:
            break
        seq = int(event["seq"])
        if expected_seq is not None and seq != expected_seq:
            result.problems.append(Problem(seq, source, "missing", f"seq {seq} follows seq {expected_seq - 1}"))
        elif expected_prev is not None and event["prev_hash"] != expected_prev:
            result.problems.append(Problem(seq, source, "link", "prev_hash is not the previous event's hash"))
        if line_hash(event) != event["hash"]:
            result.problems.append(Problem(seq, source, "altered", "hash does not recompute"))
        out.write(raw + b"\n")
        if result.first_seq is None:
            result.first_seq, result.first_prev_hash = seq, event["prev_hash"]
        result.last_seq, result.last_hash = seq, event["hash"]
        result.count += 1
        expected_seq, expected_prev = seq + 1, event["hash"]
    if source == "s3":
        from appliance.audit.db import connect_audit, watermark

        try:
            with connect_audit(tenant, timeout=3) as conn:
                mark = watermark(conn)
            result.not_shipped = max(0, mark.head_seq - max(mark.shipped_seq, result.last_seq or 0))
        except (psycopg.Error, OSError):
            result.not_shipped = 0  # the note is a courtesy; the export is complete without it
    return result
