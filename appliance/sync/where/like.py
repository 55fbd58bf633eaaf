"""LIKE and ILIKE patterns compiled to matchers that cannot backtrack catastrophically."""

from __future__ import annotations

import re
from collections.abc import Callable

from appliance.sync.where.lexer import ASCII_LOWER


def compile_like(pattern: str, case_insensitive: bool) -> Callable[[str], bool]:
    """A matcher for a LIKE pattern: % any run, _ one character, backslash escapes the next character.

    Matched segment by segment (prefix, leftmost occurrences of the middle pieces, suffix), which is linear-ish
    and cannot backtrack catastrophically the way a `.*`-regex can on patterns like '%a%a%a%a%b'. ILIKE folds
    ASCII letters only: that is what lower() does under COLLATE "C", which the SQL rendering uses.
    """
    if case_insensitive:
        pattern = pattern.translate(ASCII_LOWER)
    segments: list[list[str | None]] = [[]]  # None is "_"
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("LIKE pattern must not end with escape character")
            segments[-1].append(escaped)
        elif ch == "%":
            segments.append([])
        elif ch == "_":
            segments[-1].append(None)
        else:
            segments[-1].append(ch)
    pieces = [_LikePiece(segment) for segment in segments]
    fold = case_insensitive

    if len(pieces) == 1:
        only = pieces[0]

        def exact(value: str) -> bool:
            if fold:
                value = value.translate(ASCII_LOWER)
            return len(value) == only.length and only.match_at(value, 0)

        return exact

    head, middle, tail = pieces[0], [p for p in pieces[1:-1] if p.length], pieces[-1]

    def wildcard(value: str) -> bool:
        if fold:
            value = value.translate(ASCII_LOWER)
        tail_start = len(value) - tail.length
        if tail_start < head.length or not head.match_at(value, 0) or not tail.match_at(value, tail_start):
            return False
        position = head.length
        for piece in middle:
            found = piece.find(value, position, tail_start)
            if found < 0:
                return False
            position = found + piece.length
        return True

    return wildcard


class _LikePiece:
    """A fixed-length stretch of a LIKE pattern between two %s."""

    __slots__ = ("length", "literal", "regex")

    def __init__(self, segment: list[str | None]) -> None:
        self.length = len(segment)
        if None in segment:
            self.literal = None
            body = "".join("." if ch is None else re.escape(ch) for ch in segment)
            self.regex: re.Pattern[str] | None = re.compile(body, re.DOTALL)
        else:
            self.literal = "".join(segment)  # type: ignore[arg-type]
            self.regex = None

    def match_at(self, value: str, start: int) -> bool:
        if self.literal is not None:
            return value.startswith(self.literal, start)
        assert self.regex is not None
        return self.regex.match(value, start) is not None

    def find(self, value: str, start: int, end: int) -> int:
        if self.literal is not None:
            return value.find(self.literal, start, end)
        assert self.regex is not None
        match = self.regex.search(value, start, end)
        return -1 if match is None else match.start()
