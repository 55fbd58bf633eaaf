"""Canonical JSON for audit events: the exact bytes that are hashed, so any third party can recompute a chain.

The specification (version 1)
-----------------------------
`canonical_json(value)` is the UTF-8 encoding of a JSON text built by these rules, and nothing else:

* Values are objects, arrays, strings, integers, `true`, `false` and `null`. Floating-point numbers, NaN and
  infinities are refused: a float has several textual forms, an integer has one.
* Integers are written in decimal with a leading `-` when negative, no `+`, no leading zeros, no exponent, and
  must lie in [-(2**53 - 1), 2**53 - 1] so that verifiers written in JavaScript read them exactly.
* Object keys are strings, sorted by Unicode code point (not UTF-16 code units), each appearing once.
* No whitespace anywhere: `,` between members and elements, `:` between a key and its value.
* Strings are written between `"` with exactly these escapes: `\\"` for U+0022, `\\\\` for U+005C, `\\b \\f \\n \\r
  \\t` for U+0008, U+000C, U+000A, U+000D, U+0009, `\\u00XX` (lowercase hex, four digits) for every other code
  point below U+0020. Every other character, including `/`, U+007F and all non-ASCII, is written as itself in
  UTF-8. U+0000 is refused (Postgres cannot store it in text or jsonb); lone surrogates are refused.
* Timestamps are not a JSON type: an event's time is written as a string in RFC 3339 UTC with exactly six
  fractional digits and a `Z`, e.g. `2026-01-31T23:59:59.000001Z` (see `format_timestamp`).

This is what Python's `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)` produces for such values, which `canonical_json` uses after checking the rules above.

An audit event's hash
---------------------
For the event at `seq` (see appliance/audit/chain.py):

    body = canonical_json({"action": ..., "actor": ..., "detail": {...}, "house_id": "<uuid>" | null,
                           "seq": <int>, "subject": "<text>" | null, "ts": "<RFC 3339 UTC, µs, Z>"})
    hash = lowercase_hex(sha256(body || bytes.fromhex(prev_hash)))

where `prev_hash` is the previous event's `hash` (64 lowercase hex digits), the 32 zero bytes for seq 1, and
`||` is byte concatenation. `house_id` is the UUID in its canonical lowercase, hyphenated form.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

CANONICAL_VERSION: Final = 1
MAX_SAFE_INTEGER: Final = 2**53 - 1


class CanonicalError(ValueError):
    """A value that has no canonical form (a float, a NUL, a non-string key, ...); the message says where."""


def _check(value: Any, path: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalError(f"{path}: integer {value} is outside ±(2**53 - 1)")
        return
    if isinstance(value, float):
        raise CanonicalError(f"{path}: floats have no canonical form; use an integer or a string")
    if isinstance(value, str):
        _check_string(value, path)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{path}: object key {key!r} is not a string")
            _check_string(key, f"{path} key")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise CanonicalError(f"{path}: {type(value).__name__} is not a JSON value")


def _check_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise CanonicalError(f"{path}: strings may not contain U+0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError(f"{path}: string contains a lone surrogate") from None


# What json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False) uses, built
# once: every audited write and every verified event goes through it.
_ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Beyond this many values the quick check hands over to `_check` (which also stops a self-containing value).
_QUICK_CHECK_LIMIT: Final = 100_000


def _plainly_canonical(value: Any) -> bool:
    """True when `value` is made only of the exact built-in types the rules allow, within their limits.

    The common case, checked without building a path per value. Anything else — a float, a NUL, a key that is
    not a string, a subclass of a JSON type — returns False, and `_check` decides with a message naming where.
    Lone surrogates are left to the final UTF-8 encoding, which refuses them."""
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return False
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return False
        elif kind is dict:
            for key, member in item.items():
                if type(key) is not str or "\x00" in key:
                    return False
                stack.append(member)
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif item is not None and kind is not bool:
            return False
        if seen > _QUICK_CHECK_LIMIT:
            return False
    return True


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of `value` (see the module docstring); raises CanonicalError."""
    if not _plainly_canonical(value):
        _check(value, "$")
    try:
        return _ENCODER.encode(value).encode()
    except UnicodeEncodeError:
        _check(value, "$")  # names where the lone surrogate is
        raise CanonicalError("$: a string contains a lone surrogate") from None


def canonical_json_unchecked(value: Any) -> bytes:
    """`canonical_json` without the checks, for values already known to pass them (or whose bytes are only
    compared with bytes that were checked): what verifying a million events can afford per event."""
    return _ENCODER.encode(value).encode()


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and `Z`: the only form a timestamp takes inside a hashed event."""
    if moment.tzinfo is None:
        raise CanonicalError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    """The inverse of `format_timestamp`, strict: anything but that exact form is refused."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise CanonicalError(f"timestamp {text!r} is not RFC 3339 UTC with microseconds and Z") from None
    if format_timestamp(moment) != text:
        raise CanonicalError(f"timestamp {text!r} is not in canonical form")
    return moment
