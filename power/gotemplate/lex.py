"""Lexer for Go's text/template syntax.

Splits template text into text and action tokens, applying Go's trim markers on the way:
`{{- ` (dash then white space) trims the white space (space, tab, CR, LF) before an action and
` -}}` the white space after it; `{{/* */}}` comments must sit right against their delimiters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs


class TemplateError(Exception):
    """A template could not be parsed or executed; `line`/`column` locate it when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        where = f"{line}:{column}: " if line is not None else ""
        super().__init__(f"template: {where}{message}")
        self.message = message
        self.line = line
        self.column = column


_SPACE = " \t\r\n"
_KEYWORDS = {
    "block",
    "break",
    "continue",
    "define",
    "else",
    "end",
    "if",
    "range",
    "nil",
    "template",
    "with",
}
_NUMBER = re.compile(
    r"[+-]?(?:0[xX](?:[0-9a-fA-F_]*\.?[0-9a-fA-F_]*)(?:[pP][+-]?[0-9_]+)?"
    r"|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)i?"
)
_ALNUM = re.compile(r"[\w]*", re.UNICODE)


@attrs.define
class Token:
    kind: str  # text, left, right, space, ident, keyword, field, var, dot, string, number, char,
    # bool, nil, pipe, lparen, rparen, declare, assign, comma, eof
    value: Any
    pos: int
    text: str = ""


def _unquote(body: str, quote: str, pos: int, error: Callable[[str, int], TemplateError]) -> str:
    """Go's interpreted string/char escapes; `\\x` and octal escapes give bytes."""
    out = bytearray()
    i = 0
    simple = {
        "a": 7,
        "b": 8,
        "f": 12,
        "n": 10,
        "r": 13,
        "t": 9,
        "v": 11,
        "\\": 92,
        quote: ord(quote),
    }
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        esc = body[i + 1 : i + 2]
        if esc in simple:
            out.append(simple[esc])
            i += 2
        elif esc == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2 : i + 4]):
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif esc in ("u", "U"):
            size = 4 if esc == "u" else 8
            digits = body[i + 2 : i + 2 + size]
            if not re.fullmatch(rf"[0-9a-fA-F]{{{size}}}", digits) or int(digits, 16) > 0x10FFFF:
                raise error("invalid syntax", pos)
            out += chr(int(digits, 16)).encode("utf-8", errors="surrogatepass")
            i += 2 + size
        elif re.fullmatch(r"[0-7]{3}", body[i + 1 : i + 4]) and int(body[i + 1 : i + 4], 8) < 256:
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
        else:
            raise error("invalid syntax", pos)
    return out.decode("utf-8", errors="replace")


def _number_value(text: str) -> int | float:
    clean = text.replace("_", "")
    if clean.endswith("i"):
        raise ValueError("complex constants are not supported")
    body = clean.lstrip("+-")
    negative = clean.startswith("-")
    if body[:2].lower() == "0x" and re.search(r"[.pP]", body):
        value: int | float = float.fromhex(body)
    elif body[:2].lower() in ("0x", "0o", "0b"):
        value = int(body, 0)
    elif re.search(r"[.eE]", body):
        value = float(body)
    elif len(body) > 1 and body.startswith("0"):
        value = int(body, 8)
    else:
        value = int(body)
    return -value if negative else value


class Lexer:
    """Turns template text into tokens; trim markers are applied here."""

    def __init__(self, source: str, error: Callable[[str, int], TemplateError]):
        self.src = source
        self.error = error
        self.tokens: list[Token] = []

    def run(self) -> list[Token]:
        src, pos = self.src, 0
        while True:
            start = src.find("{{", pos)
            if start < 0:
                self._text(src[pos:], pos)
                break
            text = src[pos:start]
            marker = src[start + 2 : start + 4]
            trim_left = len(marker) == 2 and marker[0] == "-" and marker[1] in _SPACE
            if trim_left:
                text = text.rstrip(_SPACE)
            self._text(text, pos)
            inner = start + (4 if trim_left else 2)
            if src.startswith("/*", inner):
                pos = self._comment(start, inner)
            else:
                self.tokens.append(Token("left", "{{", start))
                pos = self._inside_action(inner)
        self.tokens.append(Token("eof", None, len(src)))
        return self.tokens

    def _text(self, text: str, pos: int) -> None:
        if text:
            self.tokens.append(Token("text", text, pos))

    def _at_right(self, pos: int) -> tuple[bool, bool]:
        """(at a right delimiter, with a trim marker)."""
        src = self.src
        if src.startswith("}}", pos):
            return True, False
        if src[pos : pos + 1] in _SPACE and src[pos : pos + 1] and src.startswith("-}}", pos + 1):
            return True, True
        return False, False

    def _after_right(self, pos: int, trim: bool) -> int:
        pos += 4 if trim else 2
        if trim:
            while pos < len(self.src) and self.src[pos] in _SPACE:
                pos += 1
        return pos

    def _comment(self, start: int, inner: int) -> int:
        end = self.src.find("*/", inner + 2)
        if end < 0:
            raise self.error("unclosed comment", start)
        at_right, trim = self._at_right(end + 2)
        if not at_right:
            raise self.error("comment ends before closing delimiter", start)
        return self._after_right(end + 2, trim)

    def _inside_action(self, pos: int) -> int:
        src, tokens = self.src, self.tokens
        paren_depth = 0
        while True:
            at_right, trim = self._at_right(pos)
            if at_right:
                if paren_depth:
                    raise self.error("unclosed left paren", pos)
                tokens.append(Token("right", "}}", pos))
                return self._after_right(pos, trim)
            if pos >= len(src):
                raise self.error("unclosed action", pos)
            ch = src[pos]
            if ch in _SPACE:
                end = pos
                while end < len(src) and src[end] in _SPACE and not self._at_right(end)[0]:
                    end += 1
                tokens.append(Token("space", src[pos:end], pos))
                pos = end
            elif ch == "=":
                tokens.append(Token("assign", "=", pos))
                pos += 1
            elif ch == ":":
                if src[pos + 1 : pos + 2] != "=":
                    raise self.error("expected :=", pos)
                tokens.append(Token("declare", ":=", pos))
                pos += 2
            elif ch == "|":
                tokens.append(Token("pipe", "|", pos))
                pos += 1
            elif ch == ",":
                tokens.append(Token("comma", ",", pos))
                pos += 1
            elif ch == "(":
                paren_depth += 1
                tokens.append(Token("lparen", "(", pos))
                pos += 1
            elif ch == ")":
                paren_depth -= 1
                if paren_depth < 0:
                    raise self.error("unexpected right paren", pos)
                tokens.append(Token("rparen", ")", pos))
                pos += 1
            elif ch == '"':
                pos = self._quoted(pos)
            elif ch == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    raise self.error("unterminated raw quoted string", pos)
                tokens.append(Token("string", src[pos + 1 : end], pos, src[pos : end + 1]))
                pos = end + 1
            elif ch == "'":
                pos = self._char(pos)
            elif ch == "$" or (ch == "." and not src[pos + 1 : pos + 2].isdigit()):
                pos = self._field_or_variable(pos)
            elif ch in "+-." or ch.isdigit():
                pos = self._number(pos)
            elif ch.isalpha() or ch == "_":
                pos = self._identifier(pos)
            else:
                raise self.error(f"unrecognized character in action: {ch!r}", pos)

    def _quoted(self, pos: int) -> int:
        src, i = self.src, pos + 1
        while True:
            if i >= len(src) or src[i] == "\n":
                raise self.error("unterminated quoted string", pos)
            if src[i] == "\\":
                i += 2
                continue
            if src[i] == '"':
                break
            i += 1
        value = _unquote(src[pos + 1 : i], '"', pos, self.error)
        self.tokens.append(Token("string", value, pos, src[pos : i + 1]))
        return i + 1

    def _char(self, pos: int) -> int:
        src, i = self.src, pos + 1
        while True:
            if i >= len(src) or src[i] == "\n":
                raise self.error("unterminated character constant", pos)
            if src[i] == "\\":
                i += 2
                continue
            if src[i] == "'":
                break
            i += 1
        value = _unquote(src[pos + 1 : i], "'", pos, self.error)
        if len(value) != 1:
            raise self.error(f"malformed character constant: {src[pos : i + 1]}", pos)
        self.tokens.append(Token("number", ord(value), pos, src[pos : i + 1]))
        return i + 1

    def _check_terminator(self, pos: int) -> None:
        if pos >= len(self.src) or self.src[pos] in _SPACE + ".,|:()" or self._at_right(pos)[0]:
            return
        raise self.error(f"bad character {self.src[pos]!r}", pos)

    def _field_or_variable(self, pos: int) -> int:
        kind = "var" if self.src[pos] == "$" else "field"
        name = _ALNUM.match(self.src, pos + 1).group(0)
        end = pos + 1 + len(name)
        if not name:
            self.tokens.append(Token("var" if kind == "var" else "dot", self.src[pos], pos))
            return end
        self._check_terminator(end)
        self.tokens.append(Token(kind, self.src[pos:end], pos))
        return end

    def _number(self, pos: int) -> int:
        match = _NUMBER.match(self.src, pos)
        text = match.group(0) if match else ""
        end = pos + len(text)
        if not text.strip("+-.") or (
            end < len(self.src) and (self.src[end].isalnum() or self.src[end] == "_")
        ):
            raise self.error(f"bad number syntax: {self.src[pos : max(end, pos + 1)]!r}", pos)
        try:
            value = _number_value(text)
        except ValueError as exc:
            raise self.error(f"bad number syntax: {text!r} ({exc})", pos) from None
        self.tokens.append(Token("number", value, pos, text))
        return end

    def _identifier(self, pos: int) -> int:
        word = _ALNUM.match(self.src, pos).group(0)
        end = pos + len(word)
        self._check_terminator(end)
        if word in ("true", "false"):
            self.tokens.append(Token("bool", word == "true", pos, word))
        elif word == "nil":
            self.tokens.append(Token("nil", None, pos, word))
        elif word in _KEYWORDS:
            self.tokens.append(Token("keyword", word, pos, word))
        else:
            self.tokens.append(Token("ident", word, pos, word))
        return end
