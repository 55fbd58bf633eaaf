"""Shape where-clauses: parsed into an AST, type-checked against the table, compiled to Python closures.

A shape's `where` is client input. It is never spliced into SQL: `parse_where` reads a small subset of
Postgres expression syntax into an AST (anything else is refused with the construct and its position), `bind`
resolves columns, `$n` parameters and types the way Postgres would, and the result can both

* evaluate a row given as Postgres text output (`BoundWhere.matches`, the hot path of live replication), and
* render itself back to SQL for the snapshot query (`BoundWhere.to_sql`), with every constant a placeholder.

Both must select exactly the same rows, or a client would see rows appear and vanish between the snapshot and
the live stream. So typing follows Postgres' operator resolution (see pgtypes.py), and where Postgres'
answer depends on the database's collation (ordering of text, ILIKE case folding) the SQL pins
`COLLATE "C"`, whose code point order is what Python compares.

Supported: column references (plain or "quoted"), 'strings', integers, decimals, TRUE/FALSE/NULL, $n,
`::type` casts on constants, = <> != < <= > >=, AND/OR/NOT, parentheses, [NOT] IN (constants),
[NOT] BETWEEN, IS [NOT] NULL/TRUE/FALSE/UNKNOWN, ISNULL/NOTNULL, IS [NOT] DISTINCT FROM, [NOT] LIKE/ILIKE,
and unary minus on numeric constants.

    >>> where = bind(parse_where("house_id = $1 AND deleted_at IS NULL"),
    ...              {"house_id": "int8", "deleted_at": "timestamptz"}, {1: "42"})
    >>> where.matches({"house_id": "42", "deleted_at": None})
    True
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

from psycopg import sql

from appliance.sync import pgtypes
from appliance.sync.pgparse import SyntaxRefused, check_where_syntax
from appliance.sync.pgtypes import PgInputError

MAX_WHERE_BYTES: Final = 8192
MAX_DEPTH: Final = 32  # parentheses, NOTs and unary minuses; keeps every recursion far below Python's limit
MAX_IDENTIFIER_BYTES: Final = 63  # Postgres silently truncates longer names; refuse instead of guessing

Row = Mapping[str, "str | None"]
Predicate = Callable[[Row], "bool | None"]


class WhereError(ValueError):
    """The where-clause or its params cannot be used; the message names the problem and where it is.

    `field` is the request parameter at fault ("where" or "params"), for the HTTP layer's error body.
    `position` is a 1-based character position in the where text, like Postgres' error cursor.
    """

    def __init__(self, message: str, position: int | None = None, field: str = "where") -> None:
        super().__init__(message if position is None else f"{message} at position {position}")
        self.position = position
        self.field = field


def _unsupported(what: str, position: int) -> WhereError:
    return WhereError(f"unsupported construct: {what}", position)


# -- AST ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class StringLit:
    value: str
    pos: int


@dataclass(frozen=True, slots=True)
class NumberLit:
    text: str  # digits as written, with the sign of any unary minus folded in (as Postgres' grammar does)
    pos: int


@dataclass(frozen=True, slots=True)
class BoolLit:
    value: bool
    pos: int


@dataclass(frozen=True, slots=True)
class NullLit:
    pos: int


@dataclass(frozen=True, slots=True)
class Param:
    index: int
    pos: int


@dataclass(frozen=True, slots=True)
class Cast:
    operand: Expr
    type_name: str  # resolved pg_type.typname
    pos: int


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Expr  # a cast constant; minus on a bare number is folded into the NumberLit
    pos: int


@dataclass(frozen=True, slots=True)
class Comparison:
    op: Literal["=", "<>", "<", "<=", ">", ">="]
    left: Expr
    right: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["AND", "OR"]
    args: tuple[Expr, ...]
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: int


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Like:
    operand: Expr
    pattern: Expr
    negated: bool
    case_insensitive: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Between:
    operand: Expr
    low: Expr
    high: Expr
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsBool:
    operand: Expr
    value: bool | None  # None is IS UNKNOWN
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class IsDistinct:
    left: Expr
    right: Expr
    negated: bool  # IS NOT DISTINCT FROM
    pos: int


Expr = (
    Column | StringLit | NumberLit | BoolLit | NullLit | Param | Cast | Negate | Comparison | BoolOp | Not
    | InList | Like | Between | IsNull | IsBool | IsDistinct
)

# -- tokenizer ----------------------------------------------------------------------------------------------

_WHITESPACE: Final = frozenset(" \t\n\r\f\v")
_OPERATOR_CHARS: Final = frozenset("~!@#^&|`?+-*/%<>=")
_OPERATOR_KEEPS_SIGN: Final = frozenset("~!@#^&|`?%")
_NUMBER_RE: Final = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_COMPARISON_OPS: Final = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

# Postgres' reserved keywords (and the type/function-name ones that cannot name a column). Unquoted they are
# never column references there, so they are not here either: `user = 'x'` means CURRENT_USER to Postgres.
_RESERVED: Final = frozenset(
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
_DESCRIBED_KEYWORDS: Final = {
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
_GRAMMAR_KEYWORDS: Final = frozenset({"and", "or", "not", "in", "is", "isnull", "notnull", "like", "ilike", "between"})
_STRING_PREFIXES: Final = {
    "e": "escape string E'...'",
    "b": "bit-string literal B'...'",
    "x": "bit-string literal X'...'",
    "n": "national character literal N'...'",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["word", "ident", "string", "number", "param", "op", "(", ")", ",", "::", "end"]
    text: str  # words are ASCII-lowercased; identifiers and strings are unescaped
    pos: int  # 1-based


def _is_ident_start(ch: str) -> bool:
    return (ch.isascii() and (ch.isalpha() or ch == "_")) or not ch.isascii()


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_ident_char(ch: str) -> bool:
    return (ch.isascii() and (ch.isalnum() or ch in "_$")) or not ch.isascii()


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        pos = i + 1
        if ch in _WHITESPACE:
            i += 1
        elif text.startswith("--", i) or text.startswith("/*", i):
            raise _unsupported("comment", pos)
        elif _is_ident_start(ch):
            j = i + 1
            while j < n and _is_ident_char(text[j]):
                j += 1
            word = text[i:j].translate(_ASCII_LOWER)
            if j < n and text[j] == "'" and word in _STRING_PREFIXES:
                raise _unsupported(_STRING_PREFIXES[word], pos)
            if word == "u" and text.startswith(("&'", '&"'), j):
                raise _unsupported("Unicode escape U&'...'", pos)
            _check_identifier_length(word, pos)
            tokens.append(_Token("word", word, pos))
            i = j
        elif ch == '"':
            name, i = _read_quoted(text, i, '"', "quoted identifier")
            if not name:
                raise WhereError("zero-length quoted identifier", pos)
            _check_identifier_length(name, pos)
            tokens.append(_Token("ident", name, pos))
        elif ch == "'":
            value, i = _read_quoted(text, i, "'", "string literal")
            tokens.append(_Token("string", value, pos))
        elif _is_digit(ch) or (ch == "." and i + 1 < n and _is_digit(text[i + 1])):
            match = _NUMBER_RE.match(text, i)
            assert match is not None
            j = match.end()
            if j < n and (_is_ident_char(text[j]) or text[j] == "."):
                raise WhereError(f'trailing junk after numeric literal "{text[i:j]}"', pos)
            tokens.append(_Token("number", text[i:j], pos))
            i = j
        elif ch == "$":
            j = i + 1
            while j < n and _is_digit(text[j]):
                j += 1
            if j == i + 1:
                raise _unsupported("dollar-quoted string", pos)
            if j < n and _is_ident_char(text[j]):
                raise WhereError(f'trailing junk after parameter "{text[i:j]}"', pos)
            tokens.append(_Token("param", text[i + 1 : j], pos))
            i = j
        elif ch in "(),":
            tokens.append(_Token(ch, ch, pos))  # type: ignore[arg-type]
            i += 1
        elif text.startswith("::", i):
            tokens.append(_Token("::", "::", pos))
            i += 2
        elif ch in _OPERATOR_CHARS:
            op, i = _read_operator(text, i)
            tokens.append(_Token("op", op, pos))
        elif ch == ";":
            raise _unsupported("statement separator ';'", pos)
        elif ch in "[]":
            if ch == "[" and tokens and tokens[-1].kind == "word" and tokens[-1].text == "array":
                raise _unsupported("ARRAY constructor", tokens[-1].pos)
            raise _unsupported("array subscript", pos)
        elif ch == ".":
            raise _unsupported("qualified name or field selection '.'", pos)
        elif ch == ":":
            raise _unsupported("':'", pos)
        else:
            raise WhereError(f"unexpected character {ch!r}", pos)
    tokens.append(_Token("end", "", n + 1))
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


# -- parser -------------------------------------------------------------------------------------------------


def parse_where(text: str) -> Expr:
    """Parse a where-clause into an AST; WhereError (naming construct and position) for anything else."""
    if not isinstance(text, str):
        raise WhereError("where must be a string")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise WhereError("where is not valid UTF-8 text") from None
    if size > MAX_WHERE_BYTES:
        raise WhereError(f"where is longer than {MAX_WHERE_BYTES} bytes")
    if "\x00" in text:
        raise WhereError("where contains a NUL character", text.index("\x00") + 1)
    if not text.strip():
        raise WhereError("where is empty")
    try:
        # Postgres's own grammar first, so a syntax error reads as Postgres (and Electric) words it.
        check_where_syntax(text)
    except SyntaxRefused as exc:
        raise WhereError(str(exc)) from None
    parser = _Parser(_tokenize(text))
    if parser.peek().kind == "end":
        raise WhereError("where is empty")
    expr = parser.parse_or()
    token = parser.peek()
    if token.kind != "end":
        raise parser.unexpected(token)
    return expr


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    # token helpers

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text in words

    def expect_word(self, word: str) -> _Token:
        if not self.at_word(word):
            raise self.unexpected(self.peek(), expected=word.upper())
        return self.advance()

    def expect(self, kind: str) -> _Token:
        if self.peek().kind != kind:
            raise self.unexpected(self.peek(), expected=f"'{kind}'")
        return self.advance()

    def unexpected(self, token: _Token, expected: str | None = None) -> WhereError:
        if token.kind == "op" and token.text not in _COMPARISON_OPS:
            return _unsupported(f'operator "{token.text}"', token.pos)
        if token.kind == "word" and token.text in _DESCRIBED_KEYWORDS:
            return _unsupported(_DESCRIBED_KEYWORDS[token.text], token.pos)
        if token.kind == "word" and token.text == "escape":
            return _unsupported("LIKE ... ESCAPE", token.pos)
        found = {
            "end": "end of input",
            "string": "string literal",
            "number": f"number {token.text}",
            "param": f"${token.text}",
            "ident": f'"{token.text}"',
        }.get(token.kind, token.text.upper() if token.kind == "word" else f"'{token.text}'")
        if expected:
            return WhereError(f"syntax error: expected {expected}, found {found}", token.pos)
        return WhereError(f"syntax error at {found}", token.pos)

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise WhereError(f"expression nested too deeply (more than {MAX_DEPTH} levels)", pos)

    # grammar, loosest binding first

    def parse_or(self) -> Expr:
        start = self.peek().pos
        args = [self.parse_and()]
        while self.at_word("or"):
            self.advance()
            args.append(self.parse_and())
        return args[0] if len(args) == 1 else BoolOp("OR", tuple(args), start)

    def parse_and(self) -> Expr:
        start = self.peek().pos
        args = [self.parse_not()]
        while self.at_word("and"):
            self.advance()
            args.append(self.parse_not())
        return args[0] if len(args) == 1 else BoolOp("AND", tuple(args), start)

    def parse_not(self) -> Expr:
        if self.at_word("not"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.parse_not()
            self.depth -= 1
            return Not(operand, token.pos)
        return self.parse_is()

    def parse_is(self) -> Expr:
        depth = self.depth
        try:
            return self._parse_is_chain()
        finally:
            self.depth = depth

    def _parse_is_chain(self) -> Expr:
        expr = self.parse_comparison()
        while True:
            token = self.peek()
            if self.at_word("isnull", "notnull", "is"):
                # Each IS wraps the tree one level deeper without recursing here; the binder will recurse.
                self.enter(token.pos)
            if self.at_word("isnull", "notnull"):
                self.advance()
                expr = IsNull(expr, token.text == "notnull", token.pos)
                continue
            if not self.at_word("is"):
                return expr
            self.advance()
            negated = self.at_word("not")
            if negated:
                self.advance()
            if self.at_word("null"):
                self.advance()
                expr = IsNull(expr, negated, token.pos)
            elif self.at_word("true", "false", "unknown"):
                value = {"true": True, "false": False, "unknown": None}[self.advance().text]
                expr = IsBool(expr, value, negated, token.pos)
            elif self.at_word("distinct"):
                self.advance()
                self.expect_word("from")
                expr = IsDistinct(expr, self.parse_comparison(), negated, token.pos)
                # Postgres' grammar makes IS non-associative after DISTINCT FROM's right operand.
                if self.at_word("is", "isnull", "notnull"):
                    raise self.unexpected(self.peek())
            else:
                raise self.unexpected(self.peek(), expected="NULL, TRUE, FALSE, UNKNOWN or DISTINCT FROM after IS")

    def parse_comparison(self) -> Expr:
        left = self.parse_predicate()
        token = self.peek()
        if token.kind != "op" or token.text not in _COMPARISON_OPS:
            return left
        self.advance()
        right = self.parse_predicate()
        following = self.peek()
        if following.kind == "op" and following.text in _COMPARISON_OPS:
            # Comparison operators do not chain in Postgres (`a = b = c` is a syntax error there too).
            raise WhereError(f"syntax error at '{following.text}': comparisons do not chain", following.pos)
        return Comparison(_COMPARISON_OPS[token.text], left, right, token.pos)  # type: ignore[arg-type]

    def parse_predicate(self) -> Expr:
        operand = self.parse_unary()
        token = self.peek()
        negated = False
        following = self.peek(1)
        if self.at_word("not") and following.kind == "word" and following.text in ("in", "like", "ilike", "between"):
            self.advance()
            negated = True
        if self.at_word("in"):
            self.advance()
            result: Expr = InList(operand, self._parse_in_items(), negated, token.pos)
        elif self.at_word("like", "ilike"):
            case_insensitive = self.advance().text == "ilike"
            result = Like(operand, self.parse_unary(), negated, case_insensitive, token.pos)
            if self.at_word("escape"):
                raise self.unexpected(self.peek())
        elif self.at_word("between"):
            self.advance()
            if self.at_word("symmetric", "asymmetric"):
                raise _unsupported(f"BETWEEN {self.peek().text.upper()}", self.peek().pos)
            low = self.parse_unary()
            self.expect_word("and")
            result = Between(operand, low, self.parse_unary(), negated, token.pos)
        else:
            return operand
        if self.at_word("in", "like", "ilike", "between", "not"):
            raise self.unexpected(self.peek())  # non-associative in Postgres as well
        return result

    def _parse_in_items(self) -> tuple[Expr, ...]:
        self.expect("(")
        if self.at_word("select", "with", "values", "table"):
            raise self.unexpected(self.peek())
        items = [self.parse_or()]
        while self.peek().kind == ",":
            self.advance()
            items.append(self.parse_or())
        self.expect(")")
        return tuple(items)

    def parse_unary(self) -> Expr:
        token = self.peek()
        if token.kind == "op" and token.text == "-":
            self.advance()
            self.enter(token.pos)
            operand = self.parse_unary()
            self.depth -= 1
            if isinstance(operand, NumberLit):
                # Like Postgres' doNegate: the sign becomes part of the constant, which then types by its
                # signed value (-2147483648 is an int4).
                text = operand.text[1:] if operand.text.startswith("-") else "-" + operand.text
                return NumberLit(text, token.pos)
            if isinstance(operand, Cast | Negate):
                return Negate(operand, token.pos)
            raise _unsupported("arithmetic (unary minus on a non-constant)", token.pos)
        return self.parse_postfix()

    def parse_postfix(self) -> Expr:
        expr = self.parse_primary()
        depth = self.depth
        while self.peek().kind == "::":
            token = self.advance()
            self.enter(token.pos)  # a cast chain nests like parentheses do
            expr = Cast(expr, self._parse_type_name(), token.pos)
        self.depth = depth
        return expr

    def _parse_type_name(self) -> str:
        token = self.peek()
        if token.kind == "ident":
            self.advance()
            name = token.text
            if name not in pgtypes.TYPE_ALIASES.values():
                raise WhereError(f'unsupported cast target type "{name}"', token.pos)
        elif token.kind == "word":
            self.advance()
            words = [token.text]
            second = self.peek()
            two_words = (("double", "precision"), ("character", "varying"))
            if second.kind == "word" and (token.text, second.text) in two_words:
                words.append(self.advance().text)
            elif token.text == "timestamp" and self.at_word("with", "without"):
                words.append(self.advance().text)
                words.append(self.expect_word("time").text)
                words.append(self.expect_word("zone").text)
            spelled = " ".join(words)
            if spelled in ("char", "character"):
                raise WhereError(f"unsupported cast target type {spelled} (char(1)); use bpchar or text", token.pos)
            name = pgtypes.TYPE_ALIASES.get(spelled, "")
            if not name:
                raise WhereError(f'unsupported cast target type "{spelled}"', token.pos)
        else:
            raise self.unexpected(token, expected="a type name after '::'")
        following = self.peek()
        if following.kind == "(":
            raise _unsupported("type modifier in a cast", following.pos)
        return name

    def parse_primary(self) -> Expr:
        token = self.peek()
        if token.kind == "string":
            self.advance()
            return StringLit(token.text, token.pos)
        if token.kind == "number":
            self.advance()
            return NumberLit(token.text, token.pos)
        if token.kind == "param":
            self.advance()
            index = int(token.text)
            if index < 1:
                raise WhereError(f"there is no parameter ${index}", token.pos)
            return Param(index, token.pos)
        if token.kind == "(":
            self.advance()
            self.enter(token.pos)
            if self.at_word("select", "with", "values", "table"):
                raise self.unexpected(self.peek())
            inner = self.parse_or()
            self.depth -= 1
            if self.peek().kind == ",":
                raise _unsupported("row constructor", token.pos)
            self.expect(")")
            return inner
        if token.kind == "ident":
            self.advance()
            if self.peek().kind == "(":
                raise _unsupported(f'function call "{token.text}"', token.pos)
            return Column(token.text, token.pos)
        if token.kind == "word":
            word = token.text
            if word in ("true", "false"):
                self.advance()
                return BoolLit(word == "true", token.pos)
            if word == "null":
                self.advance()
                return NullLit(token.pos)
            if word in _DESCRIBED_KEYWORDS:
                raise _unsupported(_DESCRIBED_KEYWORDS[word], token.pos)
            if word in _GRAMMAR_KEYWORDS:
                raise self.unexpected(token, expected="an expression")
            if word in _RESERVED:
                raise _unsupported(f"keyword {word.upper()}", token.pos)
            following = self.peek(1)
            if following.kind == "(":
                raise _unsupported(f'function call "{word}"', token.pos)
            if following.kind == "string":
                raise _unsupported(f"typed literal {word} '...' (write '...'::{word})", token.pos)
            self.advance()
            return Column(word, token.pos)
        raise self.unexpected(token, expected="an expression")


# -- binding: names, params and types -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A column or constant operand. Untyped constants (string literal, $n, bare NULL) have pgtype None
    until the context decides, exactly like Postgres' `unknown` literals."""

    pgtype: str | None
    pos: int
    label: str
    column: str | None = None
    value: pgtypes.Value = None  # typed: the type's Python form; untyped: the raw text (None for NULL)


_UNFOLDED: Final = object()


@dataclass(frozen=True, slots=True)
class _Pred:
    """A boolean-valued expression, compiled: three-valued closure plus its SQL rendering."""

    fn: Predicate
    sql: sql.Composable
    params: tuple[object, ...]
    columns: frozenset[str]
    pos: int
    label: str = "boolean expression"
    folded: object = _UNFOLDED  # True/False/None when the expression uses no column


_Operand = _Scalar | _Pred

_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _constant_predicate(value: bool | None) -> Predicate:
    def predicate(row: Row) -> bool | None:
        return value

    return predicate


@dataclass(frozen=True)
class BoundWhere:
    """A where-clause checked against a table's columns and compiled. Immutable and safe to share."""

    expr: Expr
    columns_used: frozenset[str]
    _predicate: Predicate = field(repr=False)
    _sql: sql.Composable = field(repr=False)
    _sql_params: tuple[object, ...] = field(repr=False)

    def matches(self, row: Row) -> bool:
        """Whether Postgres' WHERE keeps the row (TRUE only; FALSE and NULL drop it).

        `row` maps column names to Postgres text output (None for NULL) and must hold every column in
        `columns_used`.
        """
        return self._predicate(row) is True

    def evaluate(self, row: Row) -> bool | None:
        """The three-valued result: True, False or None (SQL NULL / unknown)."""
        return self._predicate(row)

    def to_sql(self) -> tuple[sql.Composable, list[object]]:
        """The condition as SQL with `%s` placeholders, and their values (strings or None), in order.

        Each value carries an explicit cast to the type Postgres gave the original constant, and
        collation-sensitive operations use COLLATE "C". Date/time constants are sent fully qualified
        (`+00`), but comparing a timestamp with a timestamptz column, like matches(), assumes the session
        runs with TimeZone=UTC, as the sync engine's connections do.
        """
        return self._sql, list(self._sql_params)


def bind(expr: Expr, columns: Mapping[str, str], params: Mapping[int, str]) -> BoundWhere:
    """Resolve columns (name -> pg_type.typname) and `$n` params, type-check, and compile `expr`."""
    for key, value in params.items():
        if not isinstance(key, int) or isinstance(key, bool) or key < 1:
            raise WhereError(f"params keys must be positive integers, got {key!r}", field="params")
        if not isinstance(value, str):
            raise WhereError(f"params[{key}] must be a string", field="params")
        if "\x00" in value:
            raise WhereError(f"params[{key}] contains a NUL character", field="params")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise WhereError(f"params[{key}] is not valid UTF-8 text", field="params") from None
    binder = _Binder(columns, params)
    try:
        predicate = binder.predicate(expr, "WHERE")
    except RecursionError:
        # Only reachable with a hand-built AST: parse_where caps nesting well below the recursion limit.
        raise WhereError(f"expression nested too deeply (more than {MAX_DEPTH} levels)") from None
    unused = sorted(set(params) - binder.params_used)
    if unused:
        raise WhereError(
            "params given but not used in where: " + ", ".join(f"params[{i}] (${i})" for i in unused),
            field="params",
        )
    return BoundWhere(expr, predicate.columns, predicate.fn, predicate.sql, predicate.params)


def compile_where(text: str, columns: Mapping[str, str], params: Mapping[int, str] | None = None) -> BoundWhere:
    """parse_where + bind."""
    return bind(parse_where(text), columns, params or {})


class _Binder:
    def __init__(self, columns: Mapping[str, str], params: Mapping[int, str]) -> None:
        self.columns = columns
        self.params = params
        self.params_used: set[int] = set()

    # -- operands

    def operand(self, node: Expr) -> _Operand:
        if isinstance(node, Column):
            if node.name not in self.columns:
                raise WhereError(f'unknown column "{node.name}"', node.pos)
            return _Scalar(self.columns[node.name], node.pos, f'column "{node.name}"', column=node.name)
        if isinstance(node, StringLit):
            return _Scalar(None, node.pos, _quote_label(node.value), value=node.value)
        if isinstance(node, NullLit):
            return _Scalar(None, node.pos, "NULL")
        if isinstance(node, BoolLit):
            return _Scalar("bool", node.pos, "TRUE" if node.value else "FALSE", value=node.value)
        if isinstance(node, NumberLit):
            return self._number(node)
        if isinstance(node, Param):
            if node.index not in self.params:
                raise WhereError(f"${node.index} is used but params[{node.index}] is not given", node.pos, "params")
            self.params_used.add(node.index)
            return _Scalar(None, node.pos, f"${node.index}", value=self.params[node.index])
        if isinstance(node, Cast):
            return self._cast(node)
        if isinstance(node, Negate):
            inner = self.operand(node.operand)
            if not isinstance(inner, _Scalar) or inner.column is not None or inner.pgtype not in pgtypes.NUMBER_TYPES:
                raise _unsupported("unary minus on a non-numeric operand", node.pos)
            try:
                value = pgtypes.negate_constant(inner.value, inner.pgtype)
            except PgInputError as exc:
                raise WhereError(str(exc), node.pos) from None
            return _Scalar(inner.pgtype, node.pos, f"-{inner.label}", value=value)
        return self.predicate(node, "")

    def _number(self, node: NumberLit) -> _Scalar:
        text = node.text
        digits = text.lstrip("-")
        if digits.isdigit():
            value = int(text)
            for typname in ("int4", "int8"):
                low, high = pgtypes.INT_RANGES[typname]
                if low <= value <= high:
                    return _Scalar(typname, node.pos, text, value=value)
            return _Scalar("numeric", node.pos, text, value=Decimal(value))
        try:
            return _Scalar("numeric", node.pos, text, value=pgtypes.parse_input("numeric", text))
        except PgInputError as exc:
            raise WhereError(str(exc), node.pos) from None

    def _cast(self, node: Cast) -> _Scalar:
        inner = self.operand(node.operand)
        target = node.type_name
        if isinstance(inner, _Pred) or inner.column is not None:
            raise _unsupported(f"cast of {inner.label} (only constants and params can be cast)", node.pos)
        if target == "json" and inner.value is not None:
            raise WhereError("json values cannot be compared; use jsonb", node.pos)
        try:
            if inner.pgtype is None:
                value = None if inner.value is None else pgtypes.parse_input(target, inner.value)
            else:
                value = pgtypes.cast_constant(inner.value, inner.pgtype, target, explicit=True)
        except PgInputError as exc:
            raise WhereError(f"cannot cast {inner.label} to {target}: {exc}", node.pos) from None
        return _Scalar(target, node.pos, f"{inner.label}::{target}", value=value)

    def _typed(self, scalar: _Scalar, target: str, context: str) -> _Scalar:
        """Give an untyped constant the type its context demands (Postgres' unknown -> type coercion)."""
        if scalar.pgtype is not None:
            return scalar
        if scalar.value is None:
            return _Scalar(target, scalar.pos, scalar.label)
        try:
            value = pgtypes.parse_input(target, scalar.value)
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", scalar.pos) from None
        return _Scalar(target, scalar.pos, scalar.label, value=value)

    # -- boolean context

    def predicate(self, node: Expr, context: str) -> _Pred:
        """Bind `node` where a boolean is required (WHERE itself, AND/OR/NOT arguments, IS TRUE …)."""
        if isinstance(node, BoolOp):
            return self._bool_op(node)
        if isinstance(node, Not):
            return self._not(node)
        if isinstance(node, Comparison):
            return self._comparison(node.op, self.operand(node.left), self.operand(node.right), node.pos)
        if isinstance(node, InList):
            return self._in_list(node)
        if isinstance(node, Like):
            return self._like(node)
        if isinstance(node, Between):
            return self._between(node)
        if isinstance(node, IsNull):
            return self._is_null(node)
        if isinstance(node, IsBool):
            return self._is_bool(node)
        if isinstance(node, IsDistinct):
            return self._is_distinct(node)
        operand = self.operand(node)
        if isinstance(operand, _Pred):
            return operand
        return self._as_predicate(operand, context or "a boolean context")

    def _as_predicate(self, scalar: _Scalar, context: str) -> _Pred:
        if scalar.pgtype is None:
            scalar = self._typed(scalar, "bool", f"argument of {context} must be boolean")
        if scalar.pgtype != "bool":
            raise WhereError(f"argument of {context} must be type boolean, not {scalar.label} of type {scalar.pgtype}",
                             scalar.pos)
        sql_part, params = _render(scalar)
        if scalar.column is None:
            return self._folded(scalar.value, sql_part, params, scalar.pos)
        name = scalar.column

        def is_true(row: Row) -> bool | None:
            value = row[name]
            return None if value is None else value == "t"

        return _Pred(is_true, sql_part, params, frozenset({name}), scalar.pos, scalar.label)

    @staticmethod
    def _folded(value: bool | None, sql_part: sql.Composable, params: tuple[object, ...], pos: int) -> _Pred:
        return _Pred(_constant_predicate(value), sql_part, params, frozenset(), pos, folded=value)

    def _finish(self, fn: Predicate, sql_part: sql.Composable, params: tuple[object, ...],
                columns: frozenset[str], pos: int) -> _Pred:
        # Expressions over constants only are decided once here, not per row.
        if not columns:
            return self._folded(fn({}), sql_part, params, pos)
        return _Pred(fn, sql_part, params, columns, pos)

    def _bool_op(self, node: BoolOp) -> _Pred:
        parts = [self.predicate(arg, node.op) for arg in node.args]
        sql_part = sql.SQL("(") + sql.SQL(f" {node.op} ").join(p.sql for p in parts) + sql.SQL(")")
        params = tuple(v for p in parts for v in p.params)
        columns = frozenset().union(*(p.columns for p in parts))
        # Constant arguments either decide the result outright or drop out of the per-row closure.
        decisive = node.op == "OR"
        if any(p.folded is decisive for p in parts):
            return _Pred(_constant_predicate(decisive), sql_part, params, columns, node.pos, folded=decisive)
        unknown = any(p.folded is None for p in parts)
        fns = [p.fn for p in parts if p.folded is _UNFOLDED]
        fn = _and_function(fns, unknown) if node.op == "AND" else _or_function(fns, unknown)
        return self._finish(fn, sql_part, params, columns, node.pos)

    def _not(self, node: Not) -> _Pred:
        inner = self.predicate(node.operand, "NOT")
        inner_fn = inner.fn

        def negated(row: Row) -> bool | None:
            result = inner_fn(row)
            return None if result is None else not result

        return self._finish(negated, sql.SQL("(NOT {})").format(inner.sql), inner.params, inner.columns, node.pos)

    # -- comparisons

    def _resolve_pair(self, left: _Operand, right: _Operand, what: str) -> tuple[_Operand, _Operand, str]:
        """Give untyped sides a type and pick the comparison domain, as Postgres' operator resolution does."""
        left_type, right_type = _type_of(left), _type_of(right)
        if left_type is None and right_type is None:
            left_type = right_type = "text"
        context = f"cannot compare {left.label} with {right.label}"
        for operand, typname in ((left, left_type), (right, right_type)):
            if typname is not None and (typname not in pgtypes.SCALAR_TYPES or typname == "json"):
                raise WhereError(f"{what} on {operand.label} of type {typname} is not supported", operand.pos)
        if isinstance(left, _Scalar):
            left = self._typed(left, right_type or left_type, context)  # type: ignore[arg-type]
        if isinstance(right, _Scalar):
            right = self._typed(right, left_type or right_type, context)  # type: ignore[arg-type]
        try:
            domain = pgtypes.comparison_domain(_type_of(left), _type_of(right))  # type: ignore[arg-type]
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", right.pos) from None
        return left, right, domain

    def _comparison(self, op: str, left: _Operand, right: _Operand, pos: int) -> _Pred:
        left, right, domain = self._resolve_pair(left, right, f"comparison {op}")
        if op not in ("=", "<>") and domain not in pgtypes.ORDERED_DOMAINS:
            raise WhereError(f"ordering comparison {op} on {domain} values is not supported", pos)
        fn = _compare_function(op, _getter(left, domain), _getter(right, domain), domain)
        left_sql, left_params = _render(left)
        right_sql, right_params = _render(right)
        ordering_text = op not in ("=", "<>") and domain in pgtypes.COLLATED_DOMAINS
        collate = sql.SQL(' COLLATE "C"') if ordering_text else sql.SQL("")
        sql_part = sql.SQL("({} {} {}{})").format(left_sql, sql.SQL(op), right_sql, collate)
        return self._finish(fn, sql_part, left_params + right_params, _columns_of(left, right), pos)

    def _between(self, node: Between) -> _Pred:
        # Postgres rewrites BETWEEN into two comparisons, each resolved on its own; so do we.
        operand = self.operand(node.operand)
        if node.negated:
            parts = [self._comparison("<", operand, self.operand(node.low), node.pos),
                     self._comparison(">", operand, self.operand(node.high), node.pos)]
        else:
            parts = [self._comparison(">=", operand, self.operand(node.low), node.pos),
                     self._comparison("<=", operand, self.operand(node.high), node.pos)]
        joiner = " OR " if node.negated else " AND "
        sql_part = sql.SQL("(") + sql.SQL(joiner).join(p.sql for p in parts) + sql.SQL(")")
        fns = [p.fn for p in parts]
        fn = _or_function(fns, False) if node.negated else _and_function(fns, False)
        return self._finish(fn, sql_part, parts[0].params + parts[1].params, parts[0].columns | parts[1].columns,
                            node.pos)

    def _is_distinct(self, node: IsDistinct) -> _Pred:
        left, right, domain = self._resolve_pair(self.operand(node.left), self.operand(node.right), "IS DISTINCT FROM")
        left_get, right_get = _getter(left, domain), _getter(right, domain)
        same = node.negated

        def distinct(row: Row) -> bool:
            a = left_get(row)
            b = right_get(row)
            if a is None or b is None:
                return (a is None and b is None) is same
            return (a == b) is same

        left_sql, left_params = _render(left)
        right_sql, right_params = _render(right)
        keyword = "IS NOT DISTINCT FROM" if node.negated else "IS DISTINCT FROM"
        sql_part = sql.SQL("({} {} {})").format(left_sql, sql.SQL(keyword), right_sql)
        return self._finish(distinct, sql_part, left_params + right_params, _columns_of(left, right), node.pos)

    def _in_list(self, node: InList) -> _Pred:
        lhs = self.operand(node.operand)
        items: list[_Scalar] = []
        for item_node in node.items:
            item = self.operand(item_node)
            if not isinstance(item, _Scalar) or item.column is not None:
                raise _unsupported(f"{item.label} in an IN list (only constants and params)", item.pos)
            items.append(item)
        op = "<>" if node.negated else "="
        if len(items) == 1:
            # Postgres turns a one-item IN list into a plain comparison.
            return self._comparison(op, lhs, items[0], node.pos)
        common = pgtypes.select_common_type([_type_of(lhs), *(item.pgtype for item in items)])
        if common is None:
            # No common type: Postgres falls back to OR-ed = (AND-ed <> for NOT IN), each resolved alone.
            parts = [self._comparison(op, lhs, item, node.pos) for item in items]
            fns = [p.fn for p in parts]
            fn = _and_function(fns, False) if node.negated else _or_function(fns, False)
            joiner = " AND " if node.negated else " OR "
            sql_part = sql.SQL("(") + sql.SQL(joiner).join(p.sql for p in parts) + sql.SQL(")")
            params = tuple(v for p in parts for v in p.params)
            return self._finish(fn, sql_part, params, frozenset().union(*(p.columns for p in parts)), node.pos)
        context = f"IN list of {lhs.label}"
        coerced = [self._coerce_item(item, common, context) for item in items]
        lhs, probe, domain = self._resolve_pair(lhs, coerced[0], "IN")
        keys = {pgtypes.constant_key(item.value, common, domain) for item in coerced if item.value is not None}
        has_null = any(item.value is None for item in coerced)
        fn = _in_function(_getter(lhs, domain), frozenset(keys), has_null, node.negated)
        in_sql, in_params = _in_sql(lhs, coerced, node.negated)
        return self._finish(fn, in_sql, in_params, _columns_of(lhs, probe), node.pos)

    def _coerce_item(self, item: _Scalar, common: str, context: str) -> _Scalar:
        if item.pgtype is None:
            return self._typed(item, common, context)
        try:
            value = pgtypes.cast_constant(item.value, item.pgtype, common, explicit=False)
        except PgInputError as exc:
            raise WhereError(f"{context}: {exc}", item.pos) from None
        return _Scalar(common, item.pos, item.label, value=value)

    # -- LIKE, IS

    def _like(self, node: Like) -> _Pred:
        keyword = ("NOT " if node.negated else "") + ("ILIKE" if node.case_insensitive else "LIKE")
        operand = self.operand(node.operand)
        pattern = self.operand(node.pattern)
        if isinstance(operand, _Pred) or (operand.pgtype is not None and operand.pgtype not in pgtypes.STRING_TYPES):
            typname = _type_of(operand)
            raise WhereError(f"{keyword} needs a text operand, {operand.label} is of type {typname}", node.pos)
        if not isinstance(pattern, _Scalar) or pattern.column is not None:
            raise _unsupported(f"{keyword} pattern {pattern.label} (only constants and params)", pattern.pos)
        if pattern.pgtype is not None and pattern.pgtype not in pgtypes.STRING_TYPES:
            raise WhereError(f"{keyword} pattern {pattern.label} is of type {pattern.pgtype}, not text", pattern.pos)
        operand = self._typed(operand, "text", keyword)
        pattern = self._typed(pattern, "text", keyword)
        # The pattern is taken as text (a bpchar pattern loses its padding); the subject is not: ~~(bpchar,
        # text) matches the padded value.
        pattern_text = pattern.value.rstrip(" ") if pattern.pgtype == "bpchar" and pattern.value else pattern.value
        if pattern_text is None:
            matcher = None
        else:
            try:
                matcher = _compile_like(pattern_text, node.case_insensitive)
            except ValueError as exc:
                raise WhereError(str(exc), pattern.pos) from None
        invert = node.negated
        if operand.column is None or matcher is None:
            subject = operand.value
            result = None if subject is None or matcher is None else matcher(subject) is not invert
            fn = _constant_predicate(result)
        else:
            name = operand.column
            match = matcher

            def fn(row: Row) -> bool | None:
                value = row[name]
                return None if value is None else match(value) is not invert

        operand_sql, operand_params = _render(operand)
        pattern_sql, pattern_params = _render(pattern)
        collate = sql.SQL(' COLLATE "C"') if node.case_insensitive else sql.SQL("")
        sql_part = sql.SQL("({} {} {}{})").format(operand_sql, sql.SQL(keyword), pattern_sql, collate)
        return self._finish(fn, sql_part, operand_params + pattern_params, _columns_of(operand), node.pos)

    def _is_null(self, node: IsNull) -> _Pred:
        operand = self.operand(node.operand)
        keyword = "IS NOT NULL" if node.negated else "IS NULL"
        if isinstance(operand, _Scalar) and operand.pgtype is None:
            operand = self._typed(operand, "text", keyword)
        want_null = not node.negated
        fn: Predicate
        if isinstance(operand, _Pred):
            inner = operand.fn

            def fn(row: Row) -> bool:
                return (inner(row) is None) is want_null

        elif operand.column is not None:
            name = operand.column

            def fn(row: Row) -> bool:
                return (row[name] is None) is want_null

        else:
            fn = _constant_predicate((operand.value is None) is want_null)
        operand_sql, params = _render(operand)
        return self._finish(fn, sql.SQL("({} {})").format(operand_sql, sql.SQL(keyword)), params,
                            _columns_of(operand), node.pos)

    def _is_bool(self, node: IsBool) -> _Pred:
        word = {True: "TRUE", False: "FALSE", None: "UNKNOWN"}[node.value]
        keyword = f"IS NOT {word}" if node.negated else f"IS {word}"
        inner = self.predicate(node.operand, keyword)
        inner_fn, wanted, negated = inner.fn, node.value, node.negated

        def fn(row: Row) -> bool:
            return (inner_fn(row) is wanted) is not negated

        sql_part = sql.SQL("({} {})").format(inner.sql, sql.SQL(keyword))
        return self._finish(fn, sql_part, inner.params, inner.columns, node.pos)


def _quote_label(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return "'" + shown.replace("'", "''") + "'"


def _type_of(operand: _Operand) -> str | None:
    return "bool" if isinstance(operand, _Pred) else operand.pgtype


def _columns_of(*operands: _Operand) -> frozenset[str]:
    names: set[str] = set()
    for operand in operands:
        if isinstance(operand, _Pred):
            names |= operand.columns
        elif operand.column is not None:
            names.add(operand.column)
    return frozenset(names)


def _render(operand: _Operand) -> tuple[sql.Composable, tuple[object, ...]]:
    """SQL for an operand: a quoted identifier, or a placeholder cast to the constant's resolved type."""
    if isinstance(operand, _Pred):
        return operand.sql, operand.params
    if operand.column is not None:
        return sql.Identifier(operand.column), ()
    typname = operand.pgtype or "text"
    if typname not in pgtypes.SCALAR_TYPES:
        # The cast is spliced into SQL, so it must come from pgtypes' fixed list, never from the caller.
        raise WhereError(f"constants of type {typname!r} are not supported", operand.pos)
    return sql.SQL("{}::" + typname).format(sql.Placeholder()), (pgtypes.sql_text(operand.value, typname),)


def _in_sql(lhs: _Operand, items: list[_Scalar], negated: bool) -> tuple[sql.Composable, tuple[object, ...]]:
    lhs_sql, params = _render(lhs)
    rendered = [_render(item) for item in items]
    keyword = "NOT IN" if negated else "IN"
    sql_part = sql.SQL("({} {} ({}))").format(lhs_sql, sql.SQL(keyword), sql.SQL(", ").join(r[0] for r in rendered))
    return sql_part, params + tuple(v for r in rendered for v in r[1])


# -- compiled closures --------------------------------------------------------------------------------------
# A getter yields an operand's key in the comparison domain for a row (None for NULL): a _ConstKey decided at
# bind time, a _ColumnKey converting the column's text output, or a boolean sub-expression's own predicate.
# Knowing which is which lets _compare_function pick a specialised closure for `column <op> constant`.

_Getter = Callable[[Row], pgtypes.Key]


@dataclass(frozen=True, slots=True)
class _ConstKey:
    key: pgtypes.Key

    def __call__(self, row: Row) -> pgtypes.Key:
        return self.key


@dataclass(frozen=True, slots=True)
class _ColumnKey:
    name: str
    convert: Callable[[str], pgtypes.Key] | None

    def __call__(self, row: Row) -> pgtypes.Key:
        value = row[self.name]
        if value is None or self.convert is None:
            return value
        return self.convert(value)


def _getter(operand: _Operand, domain: str) -> _Getter:
    if isinstance(operand, _Pred):
        if operand.folded is not _UNFOLDED:
            return _ConstKey(operand.folded)
        return operand.fn
    typname = operand.pgtype
    assert typname is not None
    if operand.column is not None:
        return _ColumnKey(operand.column, pgtypes.output_key_function(typname, domain))
    if operand.value is None:
        return _ConstKey(None)
    return _ConstKey(pgtypes.constant_key(operand.value, typname, domain))


# Domains whose text output is canonical, so equality can compare the text itself with the constant's text.
_TEXT_EQUALITY: Final[dict[str, Callable[[Any], str]]] = {
    pgtypes.INT: str,
    pgtypes.BOOL: lambda key: "t" if key else "f",
}


def _compare_function(op: str, left: _Getter, right: _Getter, domain: str) -> Predicate:
    compare = _OPERATORS[op]
    if isinstance(left, _ConstKey) and not isinstance(right, _ConstKey):
        # Keep the column on the left so the fast paths below apply; mirror the operator.
        mirrored = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        return _compare_function(mirrored, right, left, domain)
    if isinstance(right, _ConstKey):
        key = right.key
        if key is None:
            return _constant_predicate(None)
        if isinstance(left, _ConstKey):
            return _constant_predicate(None if left.key is None else compare(left.key, key))
        if isinstance(left, _ColumnKey):
            name, convert = left.name, left.convert
            if op in ("=", "<>") and domain in _TEXT_EQUALITY and convert in (int, pgtypes.bool_output):
                # Integer and boolean text output is canonical: compare strings, skip parsing every row.
                convert, key = None, _TEXT_EQUALITY[domain](key)
            if convert is None:
                if op == "=":
                    def column_equals(row: Row) -> bool | None:
                        value = row[name]
                        return None if value is None else value == key

                    return column_equals

                def column_compare(row: Row) -> bool | None:
                    value = row[name]
                    return None if value is None else compare(value, key)

                return column_compare
            converter = convert

            def column_convert_compare(row: Row) -> bool | None:
                value = row[name]
                return None if value is None else compare(converter(value), key)

            return column_convert_compare
        getter = left

        def value_compare(row: Row) -> bool | None:
            value = getter(row)
            return None if value is None else compare(value, key)

        return value_compare

    def general_compare(row: Row) -> bool | None:
        a = left(row)
        if a is None:
            return None
        b = right(row)
        return None if b is None else compare(a, b)

    return general_compare


def _in_function(lhs: _Getter, keys: frozenset[pgtypes.Key], has_null: bool, negated: bool) -> Predicate:
    # x IN (…) is true if any item equals, else NULL if an item (or x) is NULL, else false; NOT IN inverts.
    found, missing = (False, True) if negated else (True, False)
    if_missing = None if has_null else missing

    def member(row: Row) -> bool | None:
        value = lhs(row)
        if value is None:
            return None
        return found if value in keys else if_missing

    return member


def _and_function(fns: list[Predicate], unknown: bool) -> Predicate:
    if not fns:
        return _constant_predicate(None if unknown else True)
    if len(fns) == 2 and not unknown:
        first, second = fns

        def both(row: Row) -> bool | None:
            a = first(row)
            if a is False:
                return False
            b = second(row)
            if b is False:
                return False
            return None if a is None or b is None else True

        return both

    def every(row: Row) -> bool | None:
        saw_null = unknown
        for fn in fns:
            result = fn(row)
            if result is False:
                return False
            if result is None:
                saw_null = True
        return None if saw_null else True

    return every


def _or_function(fns: list[Predicate], unknown: bool) -> Predicate:
    if not fns:
        return _constant_predicate(None if unknown else False)

    def any_true(row: Row) -> bool | None:
        saw_null = unknown
        for fn in fns:
            result = fn(row)
            if result is True:
                return True
            if result is None:
                saw_null = True
        return None if saw_null else False

    return any_true


def _compile_like(pattern: str, case_insensitive: bool) -> Callable[[str], bool]:
    """A matcher for a LIKE pattern: % any run, _ one character, backslash escapes the next character.

    Matched segment by segment (prefix, leftmost occurrences of the middle pieces, suffix), which is linear-ish
    and cannot backtrack catastrophically the way a `.*`-regex can on patterns like '%a%a%a%a%b'. ILIKE folds
    ASCII letters only: that is what lower() does under COLLATE "C", which the SQL rendering uses.
    """
    if case_insensitive:
        pattern = pattern.translate(_ASCII_LOWER)
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
                value = value.translate(_ASCII_LOWER)
            return len(value) == only.length and only.match_at(value, 0)

        return exact

    head, middle, tail = pieces[0], [p for p in pieces[1:-1] if p.length], pieces[-1]

    def wildcard(value: str) -> bool:
        if fold:
            value = value.translate(_ASCII_LOWER)
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
