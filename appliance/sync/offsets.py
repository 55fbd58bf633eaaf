"""Log offsets of a shape and their wire forms (`-1`, `0_<n>`, `0_inf`, `<lsn>_<op>`).

Order, lowest first: `-1` (before everything), the snapshot chunks `0_0`, `0_1`, …, `0_inf` (end of the
snapshot), then live changes `<lsn>_<op>` with the LSN as a decimal integer >= 1. Comparing `(tx, op)` as a
tuple gives exactly that order because `-1` is `(-1, 0)` and `0_inf` is `(0, INF_OP)`.

`now` is not an offset: it asks the HTTP layer for "the latest offset", so `parse_request_offset` returns the
`NOW` marker and leaves the answer to the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

# Offsets are stored as two unsigned 64-bit fields on disk (see shapelog.py), so both parts are bounded.
# The top op value is reserved for `0_inf`: no real op position or chunk number gets near it.
MAX_TX: Final = 2**64 - 1
INF_OP: Final = 2**64 - 1
MAX_OP: Final = INF_OP - 1

OFFSET_ERROR: Final = "offset must be -1, now, or <int>_<int>"

# Digits only, no sign, no leading zeros: Python's int() alone would also take "+1", " 1", "1_000" and
# non-ASCII digits. Servers only ever send canonical forms, so anything else is not an offset we issued.
_UINT = r"(?:0|[1-9][0-9]*)"
_WIRE = re.compile(rf"({_UINT})_({_UINT}|inf)", re.ASCII)

NOW: Final = "now"


@dataclass(frozen=True, order=True, slots=True)
class LogOffset:
    """A position in one shape's log; totally ordered, hashable, immutable."""

    tx: int
    op: int

    def __post_init__(self) -> None:
        if self.tx == -1:
            if self.op != 0:
                raise ValueError("the only offset with tx -1 is -1 itself (op 0)")
            return
        if not 0 <= self.tx <= MAX_TX:
            raise ValueError(f"tx {self.tx} out of range 0..2^64-1")
        if self.op == INF_OP:
            if self.tx != 0:
                raise ValueError("only the snapshot (tx 0) has an end marker 0_inf")
        elif not 0 <= self.op <= MAX_OP:
            raise ValueError(f"op {self.op} out of range 0..2^64-2")

    # -- constructors ------------------------------------------------------------------------------------

    @classmethod
    def snapshot_chunk(cls, n: int) -> LogOffset:
        """`0_<n>`: the n-th snapshot chunk (or row, if the engine gives each row its own offset)."""
        return cls(0, n)

    @classmethod
    def live(cls, lsn: int, op: int) -> LogOffset:
        """`<lsn>_<op>`: a live change; LSN 0 would collide with snapshot offsets, so it is refused."""
        if lsn < 1:
            raise ValueError("live offsets need an LSN >= 1")
        return cls(lsn, op)

    @classmethod
    def parse(cls, text: str) -> LogOffset:
        """Parse a wire offset (not `now`); ValueError carries a message fit for a 400 answer."""
        if text == "-1":
            return BEFORE_ALL
        match = _WIRE.fullmatch(text)
        if match is None:
            raise ValueError(OFFSET_ERROR)
        tx = int(match.group(1))
        op_text = match.group(2)
        if op_text == "inf":
            if tx != 0:
                raise ValueError(OFFSET_ERROR)
            return SNAPSHOT_END
        op = int(op_text)
        if tx > MAX_TX or op > MAX_OP:
            raise ValueError(OFFSET_ERROR)
        return cls(tx, op)

    # -- properties --------------------------------------------------------------------------------------

    @property
    def is_before_all(self) -> bool:
        return self.tx == -1

    @property
    def is_snapshot(self) -> bool:
        """True for `0_<n>` and `0_inf`."""
        return self.tx == 0

    @property
    def is_live(self) -> bool:
        return self.tx >= 1

    def __str__(self) -> str:
        if self.tx == -1:
            return "-1"
        if self.op == INF_OP:
            return "0_inf"
        return f"{self.tx}_{self.op}"

    def __repr__(self) -> str:
        return f"LogOffset({self})"


BEFORE_ALL: Final = LogOffset(-1, 0)
SNAPSHOT_END: Final = LogOffset(0, INF_OP)
FIRST_SNAPSHOT_CHUNK: Final = LogOffset(0, 0)


def parse_request_offset(text: str) -> LogOffset | Literal["now"]:
    """The `offset` query parameter: a LogOffset, or `NOW` for the HTTP layer to resolve."""
    if text == NOW:
        return NOW
    return LogOffset.parse(text)
