"""What a where-clause is refused with: `WhereError` (naming the problem and its position) and the limits past
which it is refused before any parsing."""

from __future__ import annotations

from typing import Final

MAX_WHERE_BYTES: Final = 8192
MAX_DEPTH: Final = 32  # parentheses, NOTs and unary minuses; keeps every recursion far below Python's limit
MAX_IDENTIFIER_BYTES: Final = 63  # Postgres silently truncates longer names; refuse instead of guessing


class WhereError(ValueError):
    """The where-clause or its params cannot be used; the message names the problem and where it is.

    `field` is the request parameter at fault ("where" or "params"), for the HTTP layer's error body.
    `position` is a 1-based character position in the where text, like Postgres' error cursor.
    """

    def __init__(self, message: str, position: int | None = None, field: str = "where") -> None:
        super().__init__(message if position is None else f"{message} at position {position}")
        self.position = position
        self.field = field


def unsupported(what: str, position: int) -> WhereError:
    return WhereError(f"unsupported construct: {what}", position)
