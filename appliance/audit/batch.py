"""A shipped batch of audit events: its object key, its bytes and its manifest, each a pure function of its rows.

The format (version 1), so that anyone holding a batch can check it without this code
-------------------------------------------------------------------------------------
* Object key: `audit/<tenant>/<yyyy>/<mm>/<dd>/<first_seq>-<last_seq>.jsonl.gz`, the date being the UTC date of
  the batch's first event and both seqs written in decimal, zero-padded to 12 digits (so that within a day the
  keys list in seq order; a seq beyond 10**12 - 1 is simply written longer).
* Body: gzip (RFC 1952) of the JSONL. The gzip member has a fixed 10-byte header — `1f 8b 08 00 00 00 00 00 00
  ff`: deflate, no flags, mtime 0, no extra flags, OS "unknown" — then raw deflate at level 6, then CRC-32 and
  size. Nothing in it depends on when or where it was written, so the same rows give the same bytes.
* JSONL: one line per event, in seq order, each line `canonical_json(row)` (appliance/audit/canonical.py)
  followed by `\\n`, where `row` is the hashed body of the event (appliance/audit/chain.py: action, actor,
  detail, house_id, seq, subject, ts) plus `"hash"` and `"prev_hash"` (64 lowercase hex digits each).
  So each line's hash can be recomputed from the line: drop `hash` and `prev_hash`, take the canonical JSON of
  the rest, append the 32 bytes of `prev_hash`, sha256.
* Manifest: the canonical JSON of {"format", "tenant", "first_seq", "last_seq", "count", "first_prev_hash",
  "last_hash", "first_ts", "last_ts", "body_sha256", "jsonl_sha256"}, stored as the object's user metadata
  `x-amz-meta-audit-manifest`, so the store keeps it with the body, under the same lock, in one PUT.
  `body_sha256` is the sha256 of the object's bytes (the gzip; the PUT carries it as x-amz-checksum-sha256),
  `jsonl_sha256` that of the decompressed JSONL (what a rebuild with another zlib must still match).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from appliance.audit.canonical import CanonicalError, canonical_json, canonical_json_unchecked, format_timestamp
from appliance.audit.chain import ChainRow, event_body

BATCH_FORMAT: Final = "appliance-audit-batch/1"
MANIFEST_METADATA_KEY: Final = "audit-manifest"  # sent as x-amz-meta-audit-manifest
CONTENT_TYPE: Final = "application/gzip"
GZIP_LEVEL: Final = 6
SEQ_DIGITS: Final = 12
# deflate, no flags, mtime 0, no extra flags, OS 255 (unknown): no time and no platform in the bytes.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_KEY = re.compile(r"^audit/(?P<tenant>[a-z0-9-]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
                  r"(?P<first>\d{12,})-(?P<last>\d{12,})\.jsonl\.gz$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_FIELDS: Final = ("body_sha256", "count", "first_prev_hash", "first_seq", "first_ts", "format",
                          "jsonl_sha256", "last_hash", "last_seq", "last_ts", "tenant")
LINE_FIELDS: Final = frozenset(("action", "actor", "detail", "hash", "house_id", "prev_hash", "seq", "subject", "ts"))


class BatchError(ValueError):
    """Rows that cannot be shipped as one batch (a break in the chain, a value without a canonical form); the
    message names the seq."""

    def __init__(self, seq: int, message: str, kind: str = "chain") -> None:
        super().__init__(f"seq {seq}: {message}")
        self.seq = seq
        self.kind = kind  # "format" (no canonical form), "hash" (does not recompute), "chain" (a broken link)


def prefix(tenant_id: str) -> str:
    """Where every batch of the tenant lives in its audit bucket."""
    return f"audit/{tenant_id}/"


def object_key(tenant_id: str, first_ts: datetime, first_seq: int, last_seq: int) -> str:
    day = format_timestamp(first_ts)[:10].replace("-", "/")
    return f"{prefix(tenant_id)}{day}/{first_seq:0{SEQ_DIGITS}d}-{last_seq:0{SEQ_DIGITS}d}.jsonl.gz"


@dataclass(frozen=True)
class KeyInfo:
    tenant: str
    day: str  # yyyy-mm-dd
    first_seq: int
    last_seq: int


def parse_key(key: str) -> KeyInfo | None:
    """The parts of a batch key, or None for a key that is not one (seqs must be canonical: zero-padded)."""
    match = _KEY.match(key)
    if match is None:
        return None
    first, last = int(match["first"]), int(match["last"])
    if match["first"] != f"{first:0{SEQ_DIGITS}d}" or match["last"] != f"{last:0{SEQ_DIGITS}d}" or last < first:
        return None
    return KeyInfo(match["tenant"], f"{match['y']}-{match['m']}-{match['d']}", first, last)


# What canonical_json produces, for values already checked by it (a line is the checked body plus two validated
# hex strings, so checking it again would only cost time).
_dumps = canonical_json_unchecked


def _hashed_body(row: ChainRow, check_hash: bool) -> dict[str, Any]:
    body = event_body(row.seq, row.ts, row.actor, row.action, row.house_id, row.subject, row.detail)
    try:
        hashed = canonical_json(body)
    except (CanonicalError, ValueError) as exc:
        raise BatchError(row.seq, f"has no canonical form: {exc}", "format") from None
    if not (_HEX64.match(row.hash) and _HEX64.match(row.prev_hash)):
        raise BatchError(row.seq, "hash or prev_hash is not 64 lowercase hex digits", "format")
    if check_hash:
        recomputed = hashlib.sha256(hashed + bytes.fromhex(row.prev_hash)).hexdigest()
        if recomputed != row.hash:
            raise BatchError(row.seq, f"hash {row.hash} differs from the recomputed {recomputed} (the row was "
                                      "altered)", "hash")
    return body


def event_line(row: ChainRow, *, check_hash: bool = True) -> bytes:
    """The JSONL line of one event (without the newline); with `check_hash`, refuses a row whose hash does not
    recompute (BatchError), so a batch never carries an event that does not match its own hash."""
    body = _hashed_body(row, check_hash)
    body["hash"] = row.hash
    body["prev_hash"] = row.prev_hash
    return _dumps(body)


def raw_line(row: ChainRow) -> bytes:
    """The line `row` gives, built without any check: only for comparing with a line that was checked (verify
    --from both compares every Postgres row with the shipped line this way, and hashes it only if they differ).
    Rows read from Postgres have their house_id in canonical form already."""
    return _dumps({"action": row.action, "actor": row.actor, "detail": row.detail, "hash": row.hash,
                   "house_id": row.house_id, "prev_hash": row.prev_hash, "seq": row.seq, "subject": row.subject,
                   "ts": format_timestamp(row.ts)})


def deterministic_gzip(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """gzip with the fixed header described above: the same input gives the same bytes with the same zlib."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
    deflated = compressor.compress(data) + compressor.flush()
    return _GZIP_HEADER + deflated + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def gunzip(body: bytes, max_size: int = 1 << 31) -> bytes:
    """Decompress one gzip member, refusing trailing data and anything larger than `max_size` (a bomb)."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = decompressor.decompress(body, max_size)
    if decompressor.unconsumed_tail:
        raise ValueError(f"decompresses to more than {max_size} bytes")
    if not decompressor.eof:
        raise ValueError("truncated gzip stream")
    if decompressor.unused_data:
        raise ValueError("data after the gzip member")
    return data


@dataclass(frozen=True)
class Batch:
    tenant: str
    first_seq: int
    last_seq: int
    key: str
    body: bytes  # what is stored: the gzip
    jsonl: bytes
    manifest: dict[str, Any]

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1

    @property
    def body_sha256(self) -> str:
        return str(self.manifest["body_sha256"])

    @property
    def jsonl_sha256(self) -> str:
        return str(self.manifest["jsonl_sha256"])

    @property
    def last_hash(self) -> str:
        return str(self.manifest["last_hash"])

    def manifest_header(self) -> str:
        return manifest_text(self.manifest)


def manifest_text(manifest: dict[str, Any]) -> str:
    return canonical_json(manifest).decode()


def encode_jsonl(rows: Sequence[ChainRow], *, prev_hash: str | None = None, check_hash: bool = True) -> bytes:
    """The JSONL of `rows`, refusing a break: seqs must be contiguous and each prev_hash the previous hash (the
    first one `prev_hash` when given)."""
    lines: list[bytes] = []
    expected_prev = prev_hash
    expected_seq: int | None = None
    for row in rows:
        if expected_seq is not None and row.seq != expected_seq:
            raise BatchError(row.seq, f"seq {row.seq} where {expected_seq} was expected")
        if expected_prev is not None and row.prev_hash != expected_prev:
            raise BatchError(row.seq, f"prev_hash {row.prev_hash} differs from the previous event's hash "
                                      f"{expected_prev}")
        lines.append(event_line(row, check_hash=check_hash))
        expected_seq, expected_prev = row.seq + 1, row.hash
    lines.append(b"")
    return b"\n".join(lines)


def build_batch(tenant_id: str, rows: Sequence[ChainRow], *, prev_hash: str | None = None,
                check_hash: bool = True) -> Batch:
    """The batch of `rows` (ascending, contiguous); raises BatchError naming the first row that breaks the
    chain. `prev_hash` pins what the first row must follow (the shipped watermark's hash)."""
    if not rows:
        raise ValueError("a batch needs at least one event")
    jsonl = encode_jsonl(rows, prev_hash=prev_hash, check_hash=check_hash)
    body = deterministic_gzip(jsonl)
    first, last = rows[0], rows[-1]
    manifest = {
        "format": BATCH_FORMAT,
        "tenant": tenant_id,
        "first_seq": first.seq,
        "last_seq": last.seq,
        "count": len(rows),
        "first_prev_hash": first.prev_hash,
        "last_hash": last.hash,
        "first_ts": format_timestamp(first.ts),
        "last_ts": format_timestamp(last.ts),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "jsonl_sha256": hashlib.sha256(jsonl).hexdigest(),
    }
    key = object_key(tenant_id, first.ts, first.seq, last.seq)
    return Batch(tenant_id, first.seq, last.seq, key, body, jsonl, manifest)


def parse_manifest(text: str | None) -> dict[str, Any]:
    """The manifest from its metadata text; ValueError naming what is wrong."""
    if not text:
        raise ValueError("the object has no audit-manifest metadata")
    try:
        manifest = json.loads(text)
    except ValueError:
        raise ValueError("the audit-manifest metadata is not JSON") from None
    if not isinstance(manifest, dict):
        raise ValueError("the audit-manifest metadata is not a JSON object")
    if sorted(manifest) != sorted(MANIFEST_FIELDS):
        raise ValueError(f"the manifest has fields {sorted(manifest)}, expected {sorted(MANIFEST_FIELDS)}")
    if manifest["format"] != BATCH_FORMAT:
        raise ValueError(f"unknown batch format {manifest['format']!r}")
    for name in ("first_seq", "last_seq", "count"):
        if not isinstance(manifest[name], int) or isinstance(manifest[name], bool):
            raise ValueError(f"manifest {name} is not an integer")
    for name in ("first_prev_hash", "last_hash", "body_sha256", "jsonl_sha256"):
        if not isinstance(manifest[name], str) or not _HEX64.match(manifest[name]):
            raise ValueError(f"manifest {name} is not 64 lowercase hex digits")
    return manifest
