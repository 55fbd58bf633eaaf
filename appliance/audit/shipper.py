"""The audit shipper: moves hash-chained events from the tenant's Postgres to its Object Lock bucket, exactly once.

    appliance audit ship --tenant acme        (the supervised service, `audit_service(tenant)`)

One step, repeated:

1. Read the watermark (last shipped seq and hash) and the batch in flight, if any (audit.batches, shipped_at
   NULL). Without one, wait until `batch_max_events` events are unshipped or the oldest of them is
   `batch_max_age_s` old, then PLAN the next batch: seqs watermark+1 .. min(head, watermark+max), its key and
   checksums, committed to audit.batches before anything is written to the store.
2. Build the batch from its rows (appliance/audit/batch.py: the bytes are a function of the rows), refusing
   to ship a break in the chain: each row must hash to its `hash` and follow its predecessor.
3. PUT it with `If-None-Match: *`, COMPLIANCE retention until now + retention_days and both checksums.
   If the key exists already (the previous shipper was killed after the store acknowledged), read it back: the
   same events (same JSONL digest) → adopt it; anything else → halt (a conflict an operator must look at).
4. RECORD, in one transaction: the batch's version id and shipped_at, the watermark moved to its last seq.

A kill -9 between any two of these leaves either no plan (nothing was written), a plan whose object may or may
not exist (step 3 sorts it out), or a recorded batch — never a gap, a second range or a second version.
Store outage: PUTs fail, the watermark stays, events accumulate in Postgres (which is where they are safe),
the error is written to audit.shipped for `appliance status`, and the shipper retries with backoff.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg

from appliance.audit.batch import Batch, BatchError, build_batch, gunzip, parse_key, parse_manifest
from appliance.audit.db import (
    SHIPPER_LOCK_NAME,
    BatchRecord,
    Watermark,
    event_ts,
    fetch_range,
    last_shipped_batch,
    pending_batch,
    watermark,
)
from appliance.audit.store import PutOutcome, StoreError, get_object, list_keys_after, put_batch
from appliance.config import TenantConfig
from appliance.objectstore.client import S3Client

log = logging.getLogger("appliance.audit")

# Points where tests make the shipper stop dead (`--pause-at`) so they can kill -9 it exactly there.
PAUSE_POINTS: Final = ("after_plan", "after_put", "after_record")
MAX_BACKOFF_S: Final = 30.0
HALT_RETRY_S: Final = 15.0  # a halt waits for an operator; one LIST per retry is cheap


class Halt(RuntimeError):
    """Shipping cannot go on without an operator: a break in the chain, or the store holding something else
    where a batch belongs. `kind` is 'chain' or 'conflict'; the message names the seq or key."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ShipperSettings:
    max_events: int
    max_age_s: float
    retention_days: int
    poll_s: float = 0.5

    @classmethod
    def of(cls, tenant: TenantConfig) -> ShipperSettings:
        audit = tenant.audit
        # Polling the head is one indexed read; a tenth of the batch age keeps lag close to the age setting.
        return cls(audit.batch_max_events, float(audit.batch_max_age_s), audit.retention_days,
                   poll_s=min(0.5, max(0.02, float(audit.batch_max_age_s) / 10)))


@dataclass(frozen=True)
class StepResult:
    shipped: Batch | None
    adopted: bool = False  # the object was already in the store (a crash after the PUT) and matched
    wait_s: float = 0.0


class Shipper:
    def __init__(
        self,
        tenant: TenantConfig,
        s3: S3Client,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        settings: ShipperSettings | None = None,
        pause_at: tuple[str, Path] | None = None,
    ) -> None:
        self.tenant = tenant
        self.bucket = tenant.audit_bucket
        self.s3 = s3
        self._connect = connect
        self.settings = settings or ShipperSettings.of(tenant)
        self.pause_at = pause_at
        self._conn: psycopg.Connection[Any] | None = None
        self._checked_store = False

    # -- connection and the single-shipper lock --------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = self._connect()
        conn.autocommit = True
        row = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (SHIPPER_LOCK_NAME,)).fetchone()
        if not (row and row[0]):
            conn.close()
            raise ShipperBusy("another shipper of this tenant holds the lock; waiting for it to stop")
        self._conn = conn
        # A new session may follow a crash or a restore: look at the store again before planning.
        self._checked_store = False
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- one step -------------------------------------------------------------------------------------------
    def step(self, *, force: bool = False) -> StepResult:
        """Ship at most one batch; `force` ships what is there without waiting for the size or age."""
        conn = self._connection()
        mark = watermark(conn)
        pending = pending_batch(conn)
        if not self._checked_store:
            if self._check_store_beyond(conn, mark, pending):
                mark, pending = watermark(conn), pending_batch(conn)
            self._checked_store = True
        if pending is not None:
            batch = self._rebuild(conn, mark, pending)
        else:
            waiting = mark.head_seq - mark.shipped_seq
            if waiting <= 0:
                self._clear_transient_error(conn, mark)
                return StepResult(None, wait_s=self.settings.poll_s)
            if waiting < self.settings.max_events and not force:
                oldest = event_ts(conn, mark.shipped_seq + 1)
                age = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else self.settings.max_age_s
                if age < self.settings.max_age_s:
                    return StepResult(None, wait_s=min(self.settings.poll_s, self.settings.max_age_s - age))
            count = min(waiting, self.settings.max_events)
            rows = fetch_range(conn, mark.shipped_seq + 1, mark.shipped_seq + count)
            try:
                batch = build_batch(self.tenant.id, rows, prev_hash=mark.shipped_hash)
            except BatchError as exc:
                raise Halt("chain", f"not shipping past seq {mark.shipped_seq}: {exc}") from None
            if len(rows) != count or rows[0].seq != mark.shipped_seq + 1:
                raise Halt("chain", f"events {mark.shipped_seq + 1}-{mark.shipped_seq + count} are not all there "
                                    f"(found {len(rows)})")
            self._plan(conn, batch)
        self._pause("after_plan", batch)
        outcome = put_batch(self.s3, self.bucket, batch, self.settings.retention_days)
        adopted = False
        if not outcome.created:
            outcome = self._adopt(batch)
            adopted = True
        self._pause("after_put", batch)
        self._record(conn, batch, outcome, mark.shipped_seq)
        self._pause("after_record", batch)
        return StepResult(batch, adopted=adopted)

    def _rebuild(self, conn: psycopg.Connection[Any], mark: Watermark, pending: BatchRecord) -> Batch:
        """The planned batch again, from its rows; they must give the very bytes that were planned."""
        if pending.first_seq != mark.shipped_seq + 1:
            raise Halt("conflict", f"batch {pending.object_key} is planned from seq {pending.first_seq} but the "
                                   f"watermark is at {mark.shipped_seq}")
        rows = fetch_range(conn, pending.first_seq, pending.last_seq)
        if len(rows) != pending.last_seq - pending.first_seq + 1:
            raise Halt("chain", f"events {pending.first_seq}-{pending.last_seq} planned in {pending.object_key} "
                                f"are no longer all there (found {len(rows)})")
        try:
            batch = build_batch(self.tenant.id, rows, prev_hash=mark.shipped_hash)
        except BatchError as exc:
            raise Halt("chain", f"not shipping past seq {mark.shipped_seq}: {exc}") from None
        if batch.key != pending.object_key or batch.jsonl_sha256 != pending.jsonl_sha256:
            raise Halt("chain", f"events {pending.first_seq}-{pending.last_seq} changed since they were planned "
                                f"as {pending.object_key} (JSONL sha256 {batch.jsonl_sha256[:12]}…, planned "
                                f"{pending.jsonl_sha256[:12]}…)")
        return batch

    def _plan(self, conn: psycopg.Connection[Any], batch: Batch) -> None:
        conn.execute(
            "INSERT INTO audit.batches (first_seq, last_seq, object_key, event_count, body_bytes, body_sha256, "
            "jsonl_sha256, last_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (batch.first_seq, batch.last_seq, batch.key, batch.count, len(batch.body), batch.body_sha256,
             batch.jsonl_sha256, batch.last_hash),
        )

    def _adopt(self, batch: Batch) -> PutOutcome:
        """The key exists: it must hold exactly these events (then it is ours, from before a crash)."""
        existing = get_object(self.s3, self.bucket, batch.key)
        if existing is None:
            # 412 yet no current version: a delete marker appeared in between. Retry; verify will show it.
            raise StoreError(f"{batch.key} exists but cannot be read back")
        problem = same_events(existing.body, existing.manifest_text, batch)
        if problem:
            raise Halt("conflict", f"the store already holds {batch.key} (version {existing.version_id}) with "
                                   f"other contents: {problem}")
        log.info("%s was already in the store (shipped before a restart); adopting version %s",
                 batch.key, existing.version_id)
        return PutOutcome(False, existing.version_id, existing.retain_until)

    def _record(self, conn: psycopg.Connection[Any], batch: Batch, outcome: PutOutcome, shipped_seq: int) -> None:
        with conn.transaction():
            conn.execute(
                "UPDATE audit.batches SET version_id = %s, retain_until = %s, shipped_at = now() "
                "WHERE first_seq = %s AND shipped_at IS NULL",
                (outcome.version_id, outcome.retain_until, batch.first_seq),
            )
            moved = conn.execute(
                "UPDATE audit.shipped SET last_seq = %s, last_hash = %s, updated_at = now(), error_kind = NULL, "
                "error = NULL, error_since = NULL WHERE id AND last_seq = %s",
                (batch.last_seq, batch.last_hash, shipped_seq),
            ).rowcount
            if moved != 1:
                # Only one shipper holds the lock, so this means the rows moved under us; start the step over.
                raise psycopg.errors.SerializationFailure("the watermark moved during the step")

    def _check_store_beyond(self, conn: psycopg.Connection[Any], mark: Watermark, pending: BatchRecord | None) -> bool:
        """Once per session: what the store holds beyond the watermark must be the batch in flight, or batches
        this database can prove it shipped (the same events, from the watermark on, without a gap) — those are
        recorded as shipped (True is returned). A database restored to a point after those events were committed
        but before their shipping was recorded lands here.

        Anything else halts: the store holds events this database lacks (restored to before them — `appliance
        audit recover` brings them back) or other events under those seqs (someone else writes with the tenant's
        keys). Shipping on would put a second, different range of the same seqs in the store."""
        last = last_shipped_batch(conn)
        beyond: list[tuple[int, int, str]] = []
        for key in list_keys_after(self.s3, self.bucket, self.tenant.id, last.object_key if last else None):
            info = parse_key(key)
            if info is None or info.last_seq <= mark.shipped_seq:
                continue  # not a batch (verify reports it), or an older one listed late (a clock set back)
            if pending is not None and key == pending.object_key:
                continue
            beyond.append((info.first_seq, info.last_seq, key))
        shipped_seq, shipped_hash = mark.shipped_seq, mark.shipped_hash
        for first, last_seq, key in sorted(beyond):
            where = f"the store holds {key} (seq {first}-{last_seq}) beyond what this database records as shipped " \
                    f"(through seq {shipped_seq})"
            if pending is not None or first != shipped_seq + 1:
                raise Halt("conflict", f"{where}, not following it; run `appliance audit verify`")
            rows = fetch_range(conn, first, last_seq)
            if len(rows) != last_seq - first + 1:
                raise Halt("conflict", f"{where}, and this database lacks some of those events: was it restored to "
                                       f"an earlier point? `appliance audit recover {self.tenant.id}` brings them "
                                       "back from the store")
            try:
                batch = build_batch(self.tenant.id, rows, prev_hash=shipped_hash)
            except BatchError as exc:
                raise Halt("chain", f"not shipping past seq {shipped_seq}: {exc}") from None
            existing = get_object(self.s3, self.bucket, key)
            problem = "its key differs" if batch.key != key else (
                "it cannot be read" if existing is None else same_events(existing.body, existing.manifest_text, batch))
            if problem or existing is None:
                raise Halt("conflict", f"{where}, with other events than this database holds under those seqs "
                                       f"({problem}); run `appliance audit verify`")
            self._plan(conn, batch)
            self._record(conn, batch, PutOutcome(False, existing.version_id, existing.retain_until), shipped_seq)
            log.info("%s was shipped before this database recorded it (a restore?); recorded it now", key)
            shipped_seq, shipped_hash = batch.last_seq, batch.last_hash
        return bool(beyond)

    # -- errors, for `appliance status` -------------------------------------------------------------------
    def record_error(self, kind: str, message: str) -> None:
        try:
            conn = self._connection()
            conn.execute(
                "UPDATE audit.shipped SET error_kind = %s, error = %s, "
                "error_since = CASE WHEN error_kind = %s THEN error_since ELSE now() END WHERE id",
                (kind, message[:2000], kind),
            )
        except (psycopg.Error, OSError, ShipperBusy):
            pass  # the database itself is away; status will say so when it reads nothing

    def _clear_transient_error(self, conn: psycopg.Connection[Any], mark: Watermark) -> None:
        # Nothing waits to be shipped, so a past outage no longer matters; halts stay until a batch ships.
        if mark.error_kind in ("store", "database"):
            conn.execute("UPDATE audit.shipped SET error_kind = NULL, error = NULL, error_since = NULL "
                         "WHERE id AND error_kind IN ('store', 'database')")

    # -- test hook --------------------------------------------------------------------------------------
    def _pause(self, point: str, batch: Batch) -> None:
        if self.pause_at is None or self.pause_at[0] != point:
            return
        marker = self.pause_at[1]
        marker.write_text(f"{point} {batch.first_seq} {batch.last_seq} {batch.key}\n")
        log.warning("paused at %s (seq %d-%d) for a test; waiting to be killed", point, batch.first_seq,
                    batch.last_seq)
        while True:
            time.sleep(3600)

    # -- the service loop -----------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Ship until `stop` is set. Never raises for an outage: it logs, records, backs off and retries."""
        backoff = 0.0
        log.info("shipping audit events of %s to %s (batches of %d events or %.1fs, COMPLIANCE %d days)",
                 self.tenant.id, self.bucket, self.settings.max_events, self.settings.max_age_s,
                 self.settings.retention_days)
        while not stop.is_set():
            try:
                result = self.step()
                if result.shipped is not None:
                    batch = result.shipped
                    log.info("%s seq %d-%d (%d events, %d bytes) to %s", "adopted" if result.adopted else "shipped",
                             batch.first_seq, batch.last_seq, batch.count, len(batch.body), batch.key)
                backoff = 0.0
                wait = result.wait_s
            except ShipperBusy as exc:
                log.warning("%s", exc)
                wait = 5.0
            except Halt as exc:
                log.error("shipping halted (%s): %s", exc.kind, exc)
                self.record_error(exc.kind, str(exc))
                wait = HALT_RETRY_S
            except StoreError as exc:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                log.warning("object store: %s; events stay in Postgres, retrying in %.0fs", exc, backoff)
                self.record_error("store", str(exc))
                wait = backoff
            except (psycopg.Error, OSError) as exc:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                log.warning("database: %s; retrying in %.0fs", _first_line(exc), backoff)
                if isinstance(exc, psycopg.errors.SerializationFailure):
                    wait = 0.0
                else:
                    self.close()
                    wait = backoff
            if wait > 0:
                stop.wait(wait)
        self.close()
        log.info("shipper of %s stopped", self.tenant.id)

    def drain(self, *, timeout_s: float = 300.0) -> int:
        """Ship everything committed so far, ignoring the batch age; returns the watermark. For the one-off
        `appliance audit ship --once`, tests and benchmarks. Raises on any failure."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.step(force=True)
            if result.shipped is None:
                return watermark(self._connection()).shipped_seq
            if time.monotonic() > deadline:
                raise TimeoutError(f"still shipping after {timeout_s}s")


class ShipperBusy(RuntimeError):
    """Another shipper of the tenant holds the lock."""


def same_events(body: bytes, manifest_text: str | None, batch: Batch) -> str | None:
    """None when a stored object carries exactly `batch`'s events; else what differs. The gzip bytes may differ
    (another zlib after an upgrade) as long as the JSONL and the manifest's chain facts are the same."""
    try:
        manifest = parse_manifest(manifest_text)
    except ValueError as exc:
        return str(exc)
    if hashlib.sha256(body).hexdigest() != manifest["body_sha256"]:
        return "its body does not match its own manifest's sha256"
    try:
        jsonl = gunzip(body)
    except (ValueError, zlib.error) as exc:
        return f"its body is not gzip: {exc}"
    digest = hashlib.sha256(jsonl).hexdigest()
    if digest != batch.jsonl_sha256:
        return f"JSONL sha256 {digest[:12]}… where these events give {batch.jsonl_sha256[:12]}…"
    for name in ("tenant", "first_seq", "last_seq", "count", "first_prev_hash", "last_hash", "jsonl_sha256"):
        if manifest[name] != batch.manifest[name]:
            return f"manifest {name} is {manifest[name]!r}, expected {batch.manifest[name]!r}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def serve(tenant: TenantConfig, s3: S3Client, connect: Callable[[], psycopg.Connection[Any]],
          *, pause_at: tuple[str, Path] | None = None) -> None:
    """The service: ship until SIGTERM/SIGINT."""
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("audit shipper pid %d", os.getpid())
    Shipper(tenant, s3, connect, pause_at=pause_at).run(stop)
