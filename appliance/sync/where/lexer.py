"""The where-clause tokenizer: Postgres' lexical rules for the subset the parser reads (identifiers folded to
lower case the way Postgres folds them, quoted identifiers, strings with their prefixes, numbers, operators),
and the keyword sets the parser consults."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final, Literal

from appliance.sync.where.errors import MAX_IDENTIFIER_BYTES, WhereError, unsupported

_WHITESPACE: Final = frozenset(" \t\n\r\f\v")
_OPERATOR_CHARS: Final = frozenset("~!@#^&|`?+-*/%<>=")
_OPERATOR_KEEPS_SIGN: Final = frozenset("~!@#^&|`?%")
_NUMBER_RE: Final = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
COMPARISON_OPS: Final = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

# Postgres' reserved keywords (and the type/function-name ones that cannot name a column). Unquoted they are
# never column references there, so they are not here either: `user = 'x'` means CURRENT_USER to Postgres.
RESERVED: Final = frozenset(
    {
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization", "binary",
        "both", "case", "cast", "check", "collate", "collation", "column", "concurrently", "constraint", "create",
        "cross", "current_catalog", "current_date", "current_role", "current_schema", "current_time",
        "current_timestamp", "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end",
        "except", "false", "fetch", "for", "foreign", "freeze", "from", "full", "grant", "group", "having", "ilike",
        "in", "initially", "inner", "intersect", "into", "is", "isnull", "join", "lateral", "leading", "left",
        "like", "limit", "localtime", "localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only",
        "or", "order", "outer", "overlaps", "placing", "primary", "references", "returning", "right", "select",
        "session_user", "similar", "some", "symmetric", "table", "tablesample", "then", "to", "trailing", "true",
        "union", "unique", "user", "using", "variadic", "verbose", "when", "where", "window", "with",
    }
)  # fmt: skip
DESCRIBED_KEYWORDS: Final = {
    "select": "subquery (SELECT)",
    "with": "subquery (WITH)",
    "table": "subquery (TABLE)",
    "values": "subquery (VALUES)",
    "exists": "subquery (EXISTS)",
    "case": "CASE expression",
    "cast": "CAST(...) (write 'value'::type)",
    "array": "ARRAY constructor",
    "row": "row constructor",
    "any": "ANY(...)",
    "some": "SOME(...)",
    "all": "ALL(...)",
    "similar": "SIMILAR TO",
    "collate": "COLLATE",
    "overlaps": "OVERLAPS",
}
# Keywords this grammar itself uses: out of place, they are a syntax error rather than an unsupported feature.
GRAMMAR_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "is", "isnull", "notnull", "like", "ilike", "between"})
_STRING_PREFIXES: Final = {
    "e": "escape string E'...'",
    "b": "bit-string literal B'...'",
    "x": "bit-string literal X'...'",
    "n": "national character literal N'...'",
}


@dataclass(frozen=True, slots=True)
class Token:
    kind: Literal["word", "ident", "string", "number", "param", "op", "(", ")", ",", "::", "end"]
    text: str  # words are ASCII-lowercased; identifiers and strings are unescaped
    pos: int  # 1-based


def _is_ident_start(ch: str) -> bool:
    return (ch.isascii() and (ch.isalpha() or ch == "_")) or not ch.isascii()


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_ident_char(ch: str) -> bool:
    return (ch.isascii() and (ch.isalnum() or ch in "_$")) or not ch.isascii()


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        pos = i + 1
        if ch in _WHITESPACE:
            i += 1
        elif text.startswith("--", i) or text.startswith("/*", i):
            raise unsupported("comment", pos)
        elif _is_ident_start(ch):
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            word = text[i:j].translate(ASCII_LOWER)
            if j < n and text[j] == "'" and word in _STRING_PREFIXES:
                raise unsupported(_STRING_PREFIXES[word], pos)
            if word == "u" and text.startswith(("&'", '&"'), j):
                raise unsupported("Unicode escape U&'...'", pos)
            _check_identifier_length(word, pos)
            tokens.append(Token("word", word, pos))
            i = j
        elif ch == '"':
            name, i = _read_quoted(text, i, '"', "quoted identifier")
            if not name:
                raise WhereError("zero-length quoted identifier", pos)
            _check_identifier_length(name, pos)
            tokens.append(Token("ident", name, pos))
        elif ch == "'":
            value, i = _read_quoted(text, i, "'", "string literal")
            tokens.append(Token("string", value, pos))
        elif _is_digit(ch) or (ch == "." and i + 1 < n and _is_digit(text[i + 1])):
            match = _NUMBER_RE.match(text, i)
            assert match is not None
            j = match.end()
            if j < n and (_is_ident_char(text[j]) or text[j] == "."):
                raise WhereError(f'trailing junk after numeric literal "{text[i:j]}"', pos)
            tokens.append(Token("number", text[i:j], pos))
            i = j
        elif ch == "$":
            j = i + 1
            while j < n and _is_digit(text[j]):
                j += 1
            if j == i + 1:
                raise unsupported("dollar-quoted string", pos)
            if j < n and _is_ident_char(text[j]):
                raise WhereError(f'trailing junk after parameter "{text[i:j]}"', pos)
            tokens.append(Token("param", text[i + 1 : j], pos))
            i = j
        elif ch in "(),":
            tokens.append(Token(ch, ch, pos))  # type: ignore[arg-type]
            i += 1
        elif text.startswith("::", i):
            tokens.append(Token("::", "::", pos))
            i += 2
        elif ch in _OPERATOR_CHARS:
            op, i = _read_operator(text, i)
            tokens.append(Token("op", op, pos))
        elif ch == ";":
            raise unsupported("statement separator ';'", pos)
        elif ch in "[]":
            if ch == "[" and tokens and tokens[-1].kind == "word" and tokens[-1].text == "array":
                raise unsupported("ARRAY constructor", tokens[-1].pos)
            raise unsupported("array subscript", pos)
        elif ch == ".":
            raise unsupported("qualified name or field selection '.'", pos)
        elif ch == ":":
            raise unsupported("':'", pos)
        else:
            raise WhereError(f"unexpected character {ch!r}", pos)
    tokens.append(Token("end", "", n + 1))
    return tokens


def _check_identifier_length(name: str, pos: int) -> None:
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise WhereError(f"identifier longer than {MAX_IDENTIFIER_BYTES} bytes", pos)


def _read_quoted(text: str, start: int, quote: str, what: str) -> tuple[str, int]:
    """Read a quoted token starting at `start`; a doubled quote stands for one. Returns (value, next index)."""
    parts: list[str] = []
    i = start + 1
    while True:
        end = text.find(quote, i)
        if end < 0:
            raise WhereError(f"unterminated {what}", start + 1)
        parts.append(text[i:end])
        if text.startswith(quote * 2, end):
            parts.append(quote)
            i = end + 2
        else:
            return "".join(parts), end + 1


def _read_operator(text: str, start: int) -> tuple[str, int]:
    """Postgres' operator lexing: longest run of operator characters, cut before an embedded comment start,
    and without trailing + or - unless it holds one of ~!@#%^&|`? (so `a=-1` is `=` then `-1`)."""
    j = start
    while j < len(text) and text[j] in _OPERATOR_CHARS:
        j += 1
    op = text[start:j]
    for comment in ("--", "/*"):
        cut = op.find(comment, 1)
        if cut > 0:
            op = op[:cut]
    if len(op) > 1 and not _OPERATOR_KEEPS_SIGN.intersection(op):
        op = op.rstrip("+-") or op[0]
    return op, start + len(op)
