"""`parse_where`: the where-clause text to its AST (nodes.py), after Postgres' own grammar has accepted it
(pgparse.py), refusing every construct outside the supported subset with its name and position."""

from __future__ import annotations

from appliance.sync import pgtypes
from appliance.sync.pgparse import SyntaxRefused, check_where_syntax
from appliance.sync.where.errors import MAX_DEPTH, MAX_WHERE_BYTES, WhereError, unsupported
from appliance.sync.where.lexer import COMPARISON_OPS, DESCRIBED_KEYWORDS, GRAMMAR_KEYWORDS, RESERVED, Token, tokenize
from appliance.sync.where.nodes import (
    Between,
    BoolLit,
    BoolOp,
    Cast,
    Column,
    Comparison,
    Expr,
    InList,
    IsBool,
    IsDistinct,
    IsNull,
    Like,
    Negate,
    Not,
    NullLit,
    NumberLit,
    Param,
    StringLit,
)


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
    parser = _Parser(tokenize(text))
    if parser.peek().kind == "end":
        raise WhereError("where is empty")
    expr = parser.parse_or()
    token = parser.peek()
    if token.kind != "end":
        raise parser.unexpected(token)
    return expr


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    # token helpers

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def at_word(self, *words: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.text in words

    def expect_word(self, word: str) -> Token:
        if not self.at_word(word):
            raise self.unexpected(self.peek(), expected=word.upper())
        return self.advance()

    def expect(self, kind: str) -> Token:
        if self.peek().kind != kind:
            raise self.unexpected(self.peek(), expected=f"'{kind}'")
        return self.advance()

    def unexpected(self, token: Token, expected: str | None = None) -> WhereError:
        if token.kind == "op" and token.text not in COMPARISON_OPS:
            return unsupported(f'operator "{token.text}"', token.pos)
        if token.kind == "word" and token.text in DESCRIBED_KEYWORDS:
            return unsupported(DESCRIBED_KEYWORDS[token.text], token.pos)
        if token.kind == "word" and token.text == "escape":
            return unsupported("LIKE ... ESCAPE", token.pos)
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
        if token.kind != "op" or token.text not in COMPARISON_OPS:
            return left
        self.advance()
        right = self.parse_predicate()
        following = self.peek()
        if following.kind == "op" and following.text in COMPARISON_OPS:
            # Comparison operators do not chain in Postgres (`a = b = c` is a syntax error there too).
            raise WhereError(f"syntax error at '{following.text}': comparisons do not chain", following.pos)
        return Comparison(COMPARISON_OPS[token.text], left, right, token.pos)  # type: ignore[arg-type]

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
                raise unsupported(f"BETWEEN {self.peek().text.upper()}", self.peek().pos)
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
            raise unsupported("arithmetic (unary minus on a non-constant)", token.pos)
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
            raise unsupported("type modifier in a cast", following.pos)
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
                raise unsupported("row constructor", token.pos)
            self.expect(")")
            return inner
        if token.kind == "ident":
            self.advance()
            if self.peek().kind == "(":
                raise unsupported(f'function call "{token.text}"', token.pos)
            return Column(token.text, token.pos)
        if token.kind == "word":
            word = token.text
            if word in ("true", "false"):
                self.advance()
                return BoolLit(word == "true", token.pos)
            if word == "null":
                self.advance()
                return NullLit(token.pos)
            if word in DESCRIBED_KEYWORDS:
                raise unsupported(DESCRIBED_KEYWORDS[word], token.pos)
            if word in GRAMMAR_KEYWORDS:
                raise self.unexpected(token, expected="an expression")
            if word in RESERVED:
                raise unsupported(f"keyword {word.upper()}", token.pos)
            following = self.peek(1)
            if following.kind == "(":
                raise unsupported(f'function call "{word}"', token.pos)
            if following.kind == "string":
                raise unsupported(f"typed literal {word} '...' (write '...'::{word})", token.pos)
            self.advance()
            return Column(word, token.pos)
        raise self.unexpected(token, expected="an expression")
