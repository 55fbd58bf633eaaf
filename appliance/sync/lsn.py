"""Postgres WAL positions (LSNs): the text form 'X/Y' that Postgres prints, and the 64-bit integer it means."""

from __future__ import annotations

import re

_LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_MAX_LSN = (1 << 64) - 1


def parse_lsn(text: str) -> int:
    """'16/B374D848' → 0x16B374D848. The two halves are the high and low 32 bits, in hex.

    >>> parse_lsn("16/B374D848")
    97500059720
    """
    match = _LSN_TEXT.match(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """0x16B374D848 → '16/B374D848', the way Postgres prints it (upper case, no zero padding).

    >>> format_lsn(97500059720)
    '16/B374D848'
    """
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
