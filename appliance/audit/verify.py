"""`appliance audit verify`: prove the tenant's audit trail end to end, or name the first place it breaks.

    report = verify(host, tenant, source="both")      # "s3", "db" or "both"
    report.ok, report.first_break                      # Problem(seq=1234, where="s3/db", kind="mismatch", ...)

From S3 (with the tenant's own keys): every version and delete marker under `audit/<tenant>/` is listed. Each
batch key must hold exactly one version (the one the shipper wrote — its id is recorded in Postgres) and must
not be hidden by a delete marker; that version must be locked COMPLIANCE, its body must match the manifest's
sha256, its JSONL the manifest's digest and range, each line must be canonical and hash to its `hash`, and the
batches must follow each other from seq 1 without a gap or an overlap, each first prev_hash the previous
batch's last hash.

From Postgres (as the read-only `audit` role): the whole chain from the genesis hash, every hash recomputed.

Both: the two agree — for every shipped seq the Postgres row gives the very line S3 holds, what Postgres
records as shipped is in the store (same key, same version, same digest), and S3 holds nothing Postgres lacks.
A batch whose lines equal Postgres's rows is hashed once, not twice.

Problems carry the seq they start at; the report names the lowest first (`first_break`) and keeps the rest.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import time
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from appliance.audit.batch import (
    LINE_FIELDS,
    KeyInfo,
    gunzip,
    parse_key,
    parse_manifest,
    prefix,
)
from appliance.audit.canonical import MAX_SAFE_INTEGER, CanonicalError, canonical_json, canonical_json_unchecked
from appliance.audit.chain import GENESIS_HASH
from appliance.audit.db import BatchRecord, Watermark, all_batches, stream_events, watermark
from appliance.audit.store import KeyVersions, StoredObject, StoreError, get_object, list_versions
from appliance.objectstore.client import LOCK_MODE, S3Client

Source = Literal["s3", "db", "both"]
MAX_PROBLEMS: Final = 200
DOWNLOAD_THREADS: Final = 8
# From this many batches on, batches are checked in worker processes (starting them costs about a second).
PARALLEL_FROM_BATCHES: Final = 32
# How far around a seq to look for the seq an altered event was really hashed with (a renumbering).
RENUMBER_WINDOW: Final = 64
_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the first seq concerned; None for an object that is not a batch at all
    where: str  # "s3", "db" or "s3/db"
    kind: str  # altered, reordered, missing, duplicate, link, hidden, overwritten, checksum, manifest, ...
    message: str

    def line(self) -> str:
        at = f"seq {self.seq}" if self.seq is not None else "store"
        return f"{at} [{self.where}: {self.kind}] {self.message}"


@dataclass
class VerifyReport:
    tenant: str
    source: str
    problems: list[Problem] = field(default_factory=list)
    dropped: int = 0
    s3_batches: int = 0
    s3_events: int = 0
    s3_last_seq: int = 0
    db_events: int = 0
    db_head_seq: int = 0
    shipped_seq: int = 0
    seconds: float = 0.0
    incomplete: str | None = None  # the store or the database could not be read to the end

    @property
    def ok(self) -> bool:
        return not self.problems and self.incomplete is None

    def add(self, problem: Problem) -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.dropped += 1
            return
        self.problems.append(problem)

    def sorted_problems(self) -> list[Problem]:
        # Problems at the same seq: the store's own first (they explain the comparison's), then Postgres's.
        order = {"s3": 0, "db": 1, "s3/db": 2}
        # At one seq, the most telling kind first: a broken link is usually the consequence of the others.
        kinds = {"reordered": 0, "altered": 1, "hidden": 1, "overwritten": 1, "missing": 2, "link": 4}
        return sorted(self.problems, key=lambda p: (p.seq is None, p.seq or 0, order.get(p.where, 3),
                                                    kinds.get(p.kind, 3)))

    @property
    def first_break(self) -> Problem | None:
        problems = self.sorted_problems()
        return problems[0] if problems else None

    def summary(self) -> str:
        lines: list[str] = []
        verdict = "INTACT" if self.ok else ("INCOMPLETE" if not self.problems else "BROKEN")
        lines.append(f"audit trail of {self.tenant} (from {self.source}): {verdict}")
        first = self.first_break
        if first is not None:
            lines.append(f"first break: {first.line()}")
            rest = self.sorted_problems()[1:]
            if rest or self.dropped:
                lines.append(f"{len(rest) + self.dropped} more problem(s):")
                lines.extend(f"  {p.line()}" for p in rest[:20])
                if len(rest) > 20 or self.dropped:
                    lines.append(f"  ... and {len(rest) - 20 + self.dropped if len(rest) > 20 else self.dropped} more")
        if self.incomplete:
            lines.append(f"incomplete: {self.incomplete}")
        checked: list[str] = []
        if self.source in ("s3", "both"):
            checked.append(f"{self.s3_batches} batches in S3 holding {self.s3_events} events (through seq "
                           f"{self.s3_last_seq})")
        if self.source in ("db", "both"):
            checked.append(f"{self.db_events} events in Postgres (head {self.db_head_seq}, shipped through "
                           f"{self.shipped_seq}, {self.db_head_seq - self.shipped_seq} not shipped yet)")
        lines.append("checked: " + "; ".join(checked) + f" in {self.seconds:.1f}s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = [asdict(p) for p in self.sorted_problems()]
        data["ok"] = self.ok
        first = self.first_break
        data["first_break"] = asdict(first) if first else None
        return data


# -- one line, one batch ---------------------------------------------------------------------------------------


class _LineError(ValueError):
    pass


def _refuse_float(text: str) -> Any:
    raise _LineError(f"number {text} is not an integer (floats have no canonical form)")


def _refuse_constant(text: str) -> Any:
    raise _LineError(f"{text} is not JSON")


def _int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise _LineError(f"integer {text} is outside ±(2**53 - 1)")
    return value


# Floats, NaN and integers beyond ±(2**53 - 1) are refused while parsing: they have no canonical form.
_DECODER: Final = json.JSONDecoder(parse_float=_refuse_float, parse_int=_int, parse_constant=_refuse_constant)
_dumps = canonical_json_unchecked  # parse_line refuses what has no canonical form before anything is dumped


def parse_line(line: bytes) -> dict[str, Any]:
    """A JSONL line as an event dict, refusing anything that is not exactly its canonical form."""
    if b"\\u0000" in line:
        raise _LineError("a string contains U+0000")
    try:
        value = _DECODER.decode(line.decode("utf-8"))
    except _LineError:
        raise
    except ValueError as exc:
        raise _LineError(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or set(value) != LINE_FIELDS:
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise _LineError(f"fields {found} are not the event's {sorted(LINE_FIELDS)}")
    try:
        canonical = _dumps(value)
    except (ValueError, UnicodeEncodeError) as exc:
        raise _LineError(f"no canonical form: {exc}") from None
    if canonical != line:
        raise _LineError("the line is not in canonical form (key order, spacing or escapes differ)")
    if not isinstance(value["seq"], int) or isinstance(value["seq"], bool) or value["seq"] < 1:
        raise _LineError("seq is not a positive integer")
    if not isinstance(value["ts"], str) or not _TS.match(value["ts"]):
        raise _LineError(f"ts {value['ts']!r} is not RFC 3339 UTC with microseconds and Z")
    if value["house_id"] is not None and (not isinstance(value["house_id"], str) or not _UUID.match(value["house_id"])):
        raise _LineError(f"house_id {value['house_id']!r} is not a lowercase UUID")
    for name in ("hash", "prev_hash"):
        if not isinstance(value[name], str) or not _HEX64.match(value[name]):
            raise _LineError(f"{name} is not 64 lowercase hex digits")
    if not isinstance(value["detail"], dict):
        raise _LineError("detail is not an object")
    return value


def line_hash(event: dict[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k not in ("hash", "prev_hash")}
    return hashlib.sha256(_dumps(body) + bytes.fromhex(event["prev_hash"])).hexdigest()


def explain_altered(event: dict[str, Any]) -> str:
    """Why an event's hash does not recompute: renumbered (it hashes as another seq: events were reordered), or
    its content was altered."""
    seq = int(event["seq"])
    for delta in range(1, RENUMBER_WINDOW + 1):
        for other in (seq - delta, seq + delta):
            if other < 1:
                continue
            if line_hash({**event, "seq": other}) == event["hash"]:
                return (f"reordered: the event now at seq {seq} was written as seq {other} (its hash recomputes "
                        f"only with seq {other})")
    return (f"altered: hash {event['hash'][:16]}… does not recompute from the event (recomputed "
            f"{line_hash(event)[:16]}…)")


@dataclass
class BatchCheck:
    """What one stored batch holds and what is wrong with it (problems carry seqs)."""

    key: str
    info: KeyInfo
    version_id: str | None
    first_seq: int
    last_seq: int
    first_prev_hash: str | None
    last_hash: str | None
    count: int
    jsonl: bytes | None
    jsonl_sha256: str | None
    body_sha256: str
    problems: list[Problem]
    lines_ok: bool  # every line canonical, hashing to its hash, linked: Postgres rows equal to it need no rehash


def check_batch(tenant_id: str, key: str, info: KeyInfo, obj: StoredObject) -> BatchCheck:
    problems: list[Problem] = []
    first = info.first_seq
    body_sha = hashlib.sha256(obj.body).hexdigest()
    result = BatchCheck(key, info, obj.version_id, info.first_seq, info.last_seq, None, None, 0, None, None,
                        body_sha, problems, False)

    def problem(seq: int | None, kind: str, message: str) -> None:
        problems.append(Problem(seq, "s3", kind, message))

    if obj.lock_mode != LOCK_MODE or obj.retain_until is None:
        problem(first, "unlocked", f"batch {key} (version {obj.version_id}) is not locked in COMPLIANCE mode "
                                   f"(mode {obj.lock_mode}, retain until {obj.retain_until})")
    try:
        manifest = parse_manifest(obj.manifest_text)
    except ValueError as exc:
        problem(first, "manifest", f"batch {key}: {exc}")
        manifest = None
    if manifest is not None:
        if manifest["tenant"] != tenant_id:
            problem(first, "manifest", f"batch {key}: manifest names tenant {manifest['tenant']!r}")
        if (manifest["first_seq"], manifest["last_seq"]) != (info.first_seq, info.last_seq):
            problem(first, "manifest", f"batch {key}: manifest says seq {manifest['first_seq']}-"
                                       f"{manifest['last_seq']}, the key {info.first_seq}-{info.last_seq}")
        if manifest["count"] != info.last_seq - info.first_seq + 1:
            problem(first, "manifest", f"batch {key}: manifest count {manifest['count']} does not fit its range")
        if body_sha != manifest["body_sha256"]:
            problem(first, "checksum", f"batch {key}: body sha256 {body_sha[:16]}… differs from the manifest's "
                                       f"{manifest['body_sha256'][:16]}…")
    try:
        jsonl = gunzip(obj.body)
    except (ValueError, zlib.error) as exc:
        problem(first, "checksum", f"batch {key}: body is not a gzip stream ({exc})")
        return result
    result.jsonl = jsonl
    result.jsonl_sha256 = hashlib.sha256(jsonl).hexdigest()
    if manifest is not None and result.jsonl_sha256 != manifest["jsonl_sha256"]:
        problem(first, "checksum", f"batch {key}: JSONL sha256 {result.jsonl_sha256[:16]}… differs from the "
                                   f"manifest's {manifest['jsonl_sha256'][:16]}…")
    if not jsonl.endswith(b"\n"):
        problem(first, "format", f"batch {key}: the JSONL does not end with a newline (truncated?)")
    raw_lines = jsonl.split(b"\n")[:-1] if jsonl.endswith(b"\n") else jsonl.split(b"\n")
    events: list[dict[str, Any] | None] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            events.append(parse_line(raw))
        except _LineError as exc:
            events.append(None)
            problem(first + number - 1, "format", f"batch {key} line {number}: {exc}")
    seqs = [e["seq"] if e else None for e in events]
    lines_ok = not problems or all(p.kind == "unlocked" for p in problems)
    hashes: dict[int, str] = {}
    highest = info.first_seq - 1
    for index, event in enumerate(events):
        if event is None:
            lines_ok = False
            highest += 1
            continue
        seq = event["seq"]
        expected = highest + 1
        if seq in hashes:
            lines_ok = False
            problem(seq, "duplicate", f"batch {key}: seq {seq} appears again on line {index + 1}")
            continue
        if not info.first_seq <= seq <= info.last_seq:
            lines_ok = False
            problem(seq, "format", f"batch {key} line {index + 1}: seq {seq} is outside the batch's range")
        elif seq != expected:
            lines_ok = False
            if seq > expected and expected in seqs[index + 1:]:
                later = seqs.index(expected, index + 1)
                problem(expected, "reordered", f"batch {key}: seq {seq} stands where seq {expected} belongs "
                                               f"(line {index + 1}); seq {expected} is on line {later + 1}")
            elif seq > expected:
                problem(expected, "missing", f"batch {key}: events {expected}-{seq - 1} are missing "
                                             f"(line {index + 1} holds seq {seq})")
            # seq < expected: a line that comes late; reported where it belonged, as "reordered".
        if line_hash(event) != event["hash"]:
            lines_ok = False
            why = explain_altered(event)
            problem(seq, why.split(":", 1)[0], f"batch {key}: seq {seq} {why}")
        hashes[seq] = event["hash"]
        highest = max(highest, seq)
    # Links by seq, not by line: each event's prev_hash is the hash of the event one seq before it.
    by_seq = {e["seq"]: e for e in events if e is not None}
    for seq in sorted(by_seq):
        wanted = manifest["first_prev_hash"] if (seq == info.first_seq and manifest) else hashes.get(seq - 1)
        if wanted is not None and by_seq[seq]["prev_hash"] != wanted:
            lines_ok = False
            problem(seq, "link", f"batch {key}: seq {seq} prev_hash {by_seq[seq]['prev_hash'][:16]}… is not the "
                                 f"hash of the event before it {wanted[:16]}…")
    if len(events) != info.last_seq - info.first_seq + 1:
        lines_ok = False
        problem(first, "manifest", f"batch {key} holds {len(events)} lines for seq {info.first_seq}-"
                                   f"{info.last_seq}")
    if manifest is not None and events and events[-1] and events[-1]["hash"] != manifest["last_hash"]:
        lines_ok = False
        problem(info.last_seq, "manifest", f"batch {key}: the last line's hash is not the manifest's last_hash")
    result.count = len(events)
    if manifest is not None:
        result.first_prev_hash, result.last_hash = manifest["first_prev_hash"], manifest["last_hash"]
    elif events and events[0] is not None and events[-1] is not None:
        result.first_prev_hash, result.last_hash = events[0]["prev_hash"], events[-1]["hash"]
    result.lines_ok = lines_ok and not any(p.kind in ("checksum", "manifest", "format") for p in problems)
    return result


# -- the store ------------------------------------------------------------------------------------------------


@dataclass
class _Ref:
    key: str
    info: KeyInfo
    versions: KeyVersions
    version_id: str  # the version that is the batch (recorded in Postgres, else the first written)


def _first_difference(a: bytes, b: bytes) -> str:
    lines_a, lines_b = a.split(b"\n"), b.split(b"\n")
    for number, (la, lb) in enumerate(zip(lines_a, lines_b, strict=False), start=1):
        if la != lb:
            return f"line {number} differs"
    return f"{len(lines_a)} lines where the original has {len(lines_b)}"


class Verifier:
    def __init__(self, tenant_id: str, bucket: str, s3: S3Client | None, conn: Any, source: Source) -> None:
        self.tenant_id = tenant_id
        self.bucket = bucket
        self.s3 = s3
        self.conn = conn
        self.source = source
        self.report = VerifyReport(tenant_id, source)
        self.records: dict[str, BatchRecord] = {}
        self.mark: Watermark | None = None

    # -- S3 listing ------------------------------------------------------------------------------------------
    def _refs(self) -> list[_Ref]:
        assert self.s3 is not None
        refs: list[_Ref] = []
        report = self.report
        for versions in list_versions(self.s3, self.bucket, prefix(self.tenant_id)):
            info = parse_key(versions.key)
            first = info.first_seq if info else None
            if info is None or info.tenant != self.tenant_id:
                report.add(Problem(None, "s3", "stray", f"object {versions.key} is not a batch of this tenant "
                                                        f"({len(versions.versions)} version(s))"))
                continue
            original = versions.original()
            if original is None:
                report.add(Problem(first, "s3", "hidden", f"{versions.key} has only delete markers"))
                continue
            record = self.records.get(versions.key)
            chosen = original.version_id
            if record is not None and record.version_id:
                ids = [v.version_id for v in versions.versions]
                if record.version_id in ids:
                    chosen = record.version_id
                else:
                    report.add(Problem(first, "s3/db", "missing", f"batch {versions.key}: version "
                                       f"{record.version_id} recorded as shipped is not in the store (it has "
                                       f"{', '.join(ids)})"))
            if versions.hidden:
                marker = versions.markers[0]
                report.add(Problem(first, "s3", "hidden", (
                    f"batch {versions.key} (seq {info.first_seq}-{info.last_seq}) is hidden by a delete marker "
                    f"(version {marker.version_id}, {marker.last_modified.isoformat()}): a plain GET no longer "
                    f"finds it; its locked version {chosen} is still there and is what was checked")))
            refs.append(_Ref(versions.key, info, versions, chosen))
        refs.sort(key=lambda r: (r.info.first_seq, r.info.last_seq, r.key))
        return refs

    def _extra_versions(self, ref: _Ref, original: StoredObject) -> None:
        """Every version but the batch's own: a PUT over a shipped key. The original stays locked and is what
        counts; the others are reported (identical ones as duplicates, others with their first difference)."""
        assert self.s3 is not None
        for version in ref.versions.versions:
            if version.version_id == ref.version_id:
                continue
            other = get_object(self.s3, self.bucket, ref.key, version.version_id)
            if other is None:
                continue
            when = version.last_modified.isoformat()
            if other.body == original.body and other.metadata == original.metadata:
                self.report.add(Problem(ref.info.first_seq, "s3", "duplicate", (
                    f"batch {ref.key} was written again as version {version.version_id} ({when}) with the same "
                    f"bytes; the original version {ref.version_id} counts")))
                continue
            try:
                detail = _first_difference(gunzip(other.body), gunzip(original.body))
            except (ValueError, zlib.error):
                detail = "its body is not gzip"
            # What is wrong with the later version on its own (reordered lines, bad hashes, a forged manifest).
            own = sorted(check_batch(self.tenant_id, ref.key, ref.info, other).problems,
                         key=lambda p: (p.seq or 0))
            if own:
                detail += f"; in it: {own[0].message.removeprefix(f'batch {ref.key}: ')}"
            self.report.add(Problem(ref.info.first_seq, "s3", "overwritten", (
                f"batch {ref.key} (seq {ref.info.first_seq}-{ref.info.last_seq}) has a later version "
                f"{version.version_id} ({when}) that differs from the shipped version {ref.version_id} "
                f"({detail}); a plain GET returns the later one; the shipped version is locked and was checked")))

    def _download(self, refs: list[_Ref]) -> Iterator[tuple[_Ref, StoredObject | None]]:
        """The batches' versions in order, fetched a few at a time in parallel."""
        assert self.s3 is not None
        s3, bucket = self.s3, self.bucket
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            window: list[tuple[_Ref, Future[StoredObject | None]]] = []
            position = 0
            while position < len(refs) or window:
                while position < len(refs) and len(window) < DOWNLOAD_THREADS * 2:
                    ref = refs[position]
                    window.append((ref, pool.submit(get_object, s3, bucket, ref.key, ref.version_id)))
                    position += 1
                ref, future = window.pop(0)
                yield ref, future.result()

    def _checked(self, refs: list[_Ref]) -> Iterator[tuple[_Ref, BatchCheck | None]]:
        """Each batch downloaded and checked, in order. Checking (decompress, parse, hash every line) is the
        costly part: for many batches it runs in worker processes, beside this one comparing with Postgres."""
        downloads = self._download(refs)
        workers = max(1, (os.cpu_count() or 1) - (1 if self.source == "both" else 0))
        if len(refs) < PARALLEL_FROM_BATCHES:
            for ref, obj in downloads:
                if obj is not None and len(ref.versions.versions) > 1:
                    self._extra_versions(ref, obj)
                yield ref, None if obj is None else check_batch(self.tenant_id, ref.key, ref.info, obj)
            return
        context = multiprocessing.get_context("spawn")  # never fork a process that runs threads (boto3's pool)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            window: deque[tuple[_Ref, Future[BatchCheck] | None]] = deque()
            for ref, obj in downloads:
                if obj is not None and len(ref.versions.versions) > 1:
                    self._extra_versions(ref, obj)
                window.append((ref, None if obj is None else pool.submit(check_batch, self.tenant_id, ref.key,
                                                                         ref.info, obj)))
                if len(window) > workers * 2:
                    done, future = window.popleft()
                    yield done, None if future is None else future.result()
            while window:
                done, future = window.popleft()
                yield done, None if future is None else future.result()

    def s3_batches(self, since_day: str | None = None) -> Iterator[BatchCheck]:
        """Checked batches in seq order, with the problems between them (gaps, overlaps, links) reported.

        With `since_day` (yyyy-mm-dd), batches that hold only events of earlier days are skipped (for export):
        event times grow with seq, so a batch can hold such events only if the next one starts on that day or
        later."""
        report = self.report
        refs = self._refs()
        expected_seq: int = 1
        expected_prev: str | None = GENESIS_HASH
        previous: str | None = None
        if since_day is not None and refs:
            start = next((i for i in range(len(refs)) if i == len(refs) - 1 or refs[i + 1].info.day >= since_day),
                         0)
            refs = refs[start:]
            expected_seq, expected_prev = refs[0].info.first_seq, None
        for ref, check in self._checked(refs):
            if check is None:
                report.add(Problem(ref.info.first_seq, "s3", "missing", f"batch {ref.key} version {ref.version_id} "
                                                                        "disappeared while being read"))
                continue
            for problem in check.problems:
                report.add(problem)
            report.s3_batches += 1
            report.s3_events += check.count
            info = ref.info
            if info.first_seq > expected_seq:
                report.add(Problem(expected_seq, "s3", "missing", (
                    f"events {expected_seq}-{info.first_seq - 1} are in no batch (the next batch is {ref.key}"
                    + (f", the previous {previous}" if previous else "") + ")")))
            elif info.first_seq < expected_seq:
                report.add(Problem(info.first_seq, "s3", "duplicate", (
                    f"batch {ref.key} (seq {info.first_seq}-{info.last_seq}) overlaps {previous}, which "
                    f"already holds seq {info.first_seq}-{expected_seq - 1}")))
                if info.last_seq < expected_seq:
                    continue  # wholly inside what is verified already: nothing new to link
            elif check.first_prev_hash is not None and expected_prev is not None \
                    and check.first_prev_hash != expected_prev:
                report.add(Problem(info.first_seq, "s3", "link", (
                    f"batch {ref.key} starts from prev_hash {check.first_prev_hash[:16]}…, but the previous "
                    f"event's hash is {expected_prev[:16]}…" + (f" (end of {previous})" if previous else ""))))
            expected_seq = info.last_seq + 1
            expected_prev = check.last_hash
            previous = ref.key
            report.s3_last_seq = max(report.s3_last_seq, info.last_seq)
            yield check

    # -- Postgres ------------------------------------------------------------------------------------------
    def run(self) -> VerifyReport:
        started = time.monotonic()
        report = self.report
        try:
            if self.source in ("db", "both"):
                self.mark = watermark(self.conn)
                report.db_head_seq = self.mark.head_seq
                report.shipped_seq = self.mark.shipped_seq
                self.records = {r.object_key: r for r in all_batches(self.conn)}
            if self.source == "s3":
                for _ in self.s3_batches():
                    pass
            elif self.source == "db":
                self._db_chain(iter(()))
            else:
                self._db_chain(self.s3_batches())
                self._records_in_store()
        except StoreError as exc:
            report.incomplete = f"the store could not be read: {exc}"
        except OSError as exc:
            report.incomplete = f"could not read: {exc}"
        report.seconds = time.monotonic() - started
        return report

    def _db_chain(self, batches: Iterator[BatchCheck]) -> None:
        """Verify Postgres's chain from the genesis hash; where S3 holds the same seqs, compare line by line."""
        report = self.report
        events = stream_events(self.conn)
        pending: dict[str, Any] | None = None
        expected_seq, expected_prev = 1, GENESIS_HASH

        def next_event() -> dict[str, Any] | None:
            nonlocal pending
            if pending is not None:
                event, pending = pending, None
                return event
            return next(events, None)

        def check_event(event: dict[str, Any], trusted: bool) -> None:
            nonlocal expected_seq, expected_prev
            report.db_events += 1
            seq = event["seq"]
            hash_ok = True
            if not trusted:
                body = {k: v for k, v in event.items() if k not in ("hash", "prev_hash")}
                try:
                    hashed = canonical_json(body)
                except CanonicalError as exc:
                    hash_ok = False
                    report.add(Problem(seq, "db", "format", f"row cannot be hashed: {exc}"))
                else:
                    if hashlib.sha256(hashed + bytes.fromhex(event["prev_hash"])).hexdigest() != event["hash"]:
                        hash_ok = False
                        why = explain_altered(event)
                        report.add(Problem(seq, "db", why.split(":", 1)[0], f"row {why}"))
            if seq != expected_seq:
                report.add(Problem(expected_seq, "db", "missing", f"events {expected_seq}-{seq - 1} are not in "
                                                                  f"Postgres (the next row is seq {seq})"))
            elif event["prev_hash"] != expected_prev and hash_ok:
                # (A row that does not hash is reported as such; its broken link is the same fact.)
                report.add(Problem(seq, "db", "link", f"seq {seq} prev_hash {event['prev_hash'][:16]}… is not "
                                                      f"the previous event's hash {expected_prev[:16]}…"))
            expected_seq, expected_prev = seq + 1, event["hash"]

        for check in batches:
            # Rows before this batch: unshipped or in a gap of the store; checked on their own.
            while (event := next_event()) is not None and event["seq"] < check.first_seq:
                check_event(event, trusted=False)
            if event is None:
                self._store_ahead(check.first_seq, check.last_seq, check.key)
                continue
            if event["seq"] > check.last_seq:  # Postgres has none of this batch's seqs
                pending = event
                self._store_ahead(check.first_seq, check.last_seq, check.key)
                continue
            # An overlapping batch's first rows were consumed already: it is compared from this row on.
            group = [event]
            while len(group) < check.last_seq - event["seq"] + 1:
                more = next_event()
                if more is None:
                    break
                if more["seq"] > check.last_seq:
                    pending = more
                    break
                group.append(more)
            same = self._compare(check, group) and check.lines_ok
            for member in group:
                check_event(member, trusted=same)
            if group[-1]["seq"] < check.last_seq:
                self._store_ahead(group[-1]["seq"] + 1, check.last_seq, check.key)
        while (event := next_event()) is not None:
            check_event(event, trusted=False)

    def _compare(self, check: BatchCheck, group: list[dict[str, Any]]) -> bool:
        """Postgres rows against the lines S3 holds for the same seqs; names the fields that differ. True when
        the rows give exactly the batch's JSONL (then a row is hashed only if the batch's line was not)."""
        if check.jsonl is None:
            return False
        if group[0]["seq"] == check.first_seq and len(group) == check.count \
                and b"".join(_dumps(e) + b"\n" for e in group) == check.jsonl:
            return True
        stored: dict[int, bytes] = {}
        for raw in check.jsonl.split(b"\n"):
            if not raw:
                continue
            try:
                seq = int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                continue
            stored.setdefault(seq, raw)
        for event in group:
            seq = event["seq"]
            try:
                mine = _dumps(event)
            except (TypeError, ValueError) as exc:
                self.report.add(Problem(seq, "s3/db", "mismatch", f"the Postgres row cannot be encoded: {exc}"))
                continue
            theirs = stored.get(seq)
            if theirs is None:
                self.report.add(Problem(seq, "s3/db", "mismatch", f"batch {check.key} has no line for seq "
                                                                  f"{seq}, which Postgres holds"))
                continue
            if mine == theirs:
                continue
            db_event, s3_event = json.loads(mine), json.loads(theirs)
            fields = sorted(k for k in db_event if db_event.get(k) != s3_event.get(k))
            shown = "; ".join(f"{k}: S3 has {_short(s3_event.get(k))}, Postgres has {_short(db_event.get(k))}"
                              for k in fields[:3])
            db_ok = line_hash(db_event) == db_event["hash"]
            s3_ok = line_hash(s3_event) == s3_event["hash"]
            verdict = ("the Postgres row no longer matches its own hash: it was altered after it was shipped"
                       if s3_ok and not db_ok else
                       "both hash consistently: the chain was rewritten in Postgres from here on" if s3_ok and db_ok
                       else "the S3 copy does not hash correctly")
            self.report.add(Problem(seq, "s3/db", "mismatch", f"Postgres and S3 ({check.key}) differ in "
                                                                  f"{', '.join(fields)}: {shown}; {verdict}"))
        return False

    def _store_ahead(self, first: int, last: int, key: str) -> None:
        self.report.add(Problem(first, "s3/db", "missing", (
            f"S3 holds events {first}-{last} ({key}) that Postgres does not have: the database was restored to "
            "an earlier point, or events were deleted")))

    def _records_in_store(self) -> None:
        """What Postgres records as shipped must be in the store, and the watermark must match."""
        report, mark = self.report, self.mark
        assert mark is not None
        shipped = [r for r in self.records.values() if r.shipped_at is not None]
        covered = report.s3_last_seq
        if mark.shipped_seq > covered:
            report.add(Problem(covered + 1, "s3/db", "missing", (
                f"Postgres records events through seq {mark.shipped_seq} as shipped, but S3 holds them only "
                f"through seq {covered}")))
        if mark.shipped_seq > mark.head_seq:
            report.add(Problem(mark.head_seq + 1, "db", "watermark", (
                f"the watermark ({mark.shipped_seq}) is beyond the chain head ({mark.head_seq})")))
        expected = 1
        for record in sorted(shipped, key=lambda r: r.first_seq):
            if record.first_seq != expected:
                report.add(Problem(expected, "db", "watermark", (
                    f"Postgres's batch records jump from seq {expected - 1} to {record.first_seq} "
                    f"({record.object_key})")))
            expected = record.last_seq + 1
        if shipped and expected - 1 != mark.shipped_seq:
            report.add(Problem(min(expected, mark.shipped_seq + 1), "db", "watermark", (
                f"the watermark says shipped through {mark.shipped_seq}, the batch records through {expected - 1}")))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def verify_tenant(tenant_id: str, bucket: str, *, s3: S3Client | None, conn: Any, source: Source) -> VerifyReport:
    """Verify with the given clients (s3 for "s3"/"both", an `audit`-role connection for "db"/"both")."""
    if source in ("s3", "both") and s3 is None:
        raise ValueError("verifying the store needs an S3 client")
    if source in ("db", "both") and conn is None:
        raise ValueError("verifying Postgres needs a connection")
    return Verifier(tenant_id, bucket, s3, conn, source).run()


def verify(host: Any, tenant: Any, source: Source = "both") -> VerifyReport:
    """Verify `tenant` on this host with its own S3 keys and the read-only `audit` database role."""
    from appliance.audit.db import connect_audit
    from appliance.audit.store import audit_client

    s3 = audit_client(host, tenant) if source in ("s3", "both") else None
    if source == "s3":
        return verify_tenant(tenant.id, tenant.audit_bucket, s3=s3, conn=None, source=source)
    with connect_audit(tenant) as conn:
        return verify_tenant(tenant.id, tenant.audit_bucket, s3=s3, conn=conn, source=source)

