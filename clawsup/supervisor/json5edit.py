"""Replace one string value in JSON5 text, leaving every other byte as it was.

The gateway's config is JSON5 that people edit by hand: comments, unquoted keys, single
quotes, trailing commas. Re-serialising it after ``set_model`` would drop all of that.
This finds the span of the value at a dotted key with a small tokenizer and swaps in the
new string. It only locates; it never decides what the document means: the caller parses
the result again and compares it with the document it intended, and falls back to a full
rewrite on any doubt (duplicate keys, odd escapes, a key that is missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import json5

_PUNCTUATION = "{}[]:,"
# ECMAScript white space and line terminators, as JSON5 allows them between tokens.
_SPACE = " \t\n\r\v\f\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
         "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


class Unsupported(Exception):
    """The text is not JSON5 this module understands; the caller rewrites the file."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "punct", "string" or "literal"
    text: str
    start: int
    end: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in _SPACE:
            i += 1
        elif text.startswith("//", i):
            newline = min((p for p in (text.find(c, i) for c in "\n\r\u2028\u2029") if p >= 0),
                          default=n)
            i = newline
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close < 0:
                raise Unsupported("unterminated comment")
            i = close + 2
        elif char in _PUNCTUATION:
            tokens.append(_Token("punct", char, i, i + 1))
            i += 1
        elif char in "\"'":
            j = i + 1
            while j < n and text[j] != char:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise Unsupported("unterminated string")
            tokens.append(_Token("string", text[i : j + 1], i, j + 1))
            i = j + 1
        else:
            j = i
            while (j < n and text[j] not in _SPACE and text[j] not in _PUNCTUATION
                   and text[j] not in "\"'" and not text.startswith(("//", "/*"), j)):
                j += 1
            tokens.append(_Token("literal", text[i:j], i, j))
            i = j
    return tokens


def _key(token: _Token) -> str:
    if token.kind == "string":
        value = json5.loads(token.text)
        if not isinstance(value, str):
            raise Unsupported("a key that is not a string")
        return value
    if token.kind == "literal":
        return token.text
    raise Unsupported(f"unexpected {token.text!r} where a key belongs")


class _Finder:
    def __init__(self, tokens: list[_Token], path: list[str]) -> None:
        self.tokens = tokens
        self.path = path
        self.pos = 0
        self.found: _Token | None = None

    def _next(self) -> _Token:
        if self.pos >= len(self.tokens):
            raise Unsupported("unexpected end of text")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def value(self, path: list[str] | None) -> None:
        """Consume one value; ``path`` is what remains to find inside it (None: nothing)."""
        token = self._next()
        if token.text == "{" and token.kind == "punct":
            self._object(path)
        elif token.text == "[" and token.kind == "punct":
            self._array()
        elif token.kind in ("string", "literal"):
            if path == [] and token.kind == "string":
                if self.found is not None:
                    raise Unsupported("the key appears twice")
                self.found = token
        else:
            raise Unsupported(f"unexpected {token.text!r}")

    def _object(self, path: list[str] | None) -> None:
        while True:
            token = self._peek()
            if token is not None and token.text == "}" and token.kind == "punct":
                self.pos += 1
                return
            key = _key(self._next())
            colon = self._next()
            if colon.text != ":" or colon.kind != "punct":
                raise Unsupported("expected ':' after a key")
            inner = path[1:] if path and path[0] == key else None
            self.value(inner)
            separator = self._next()
            if separator.kind != "punct" or separator.text not in ",}":
                raise Unsupported("expected ',' or '}'")
            if separator.text == "}":
                return

    def _array(self) -> None:
        while True:
            token = self._peek()
            if token is not None and token.text == "]" and token.kind == "punct":
                self.pos += 1
                return
            self.value(None)
            separator = self._next()
            if separator.kind != "punct" or separator.text not in ",]":
                raise Unsupported("expected ',' or ']'")
            if separator.text == "]":
                return


def replace_string(text: str, dotted_key: str, value: str) -> str:
    """``text`` with the string at ``dotted_key`` replaced by ``value``.

    Raises Unsupported when the key is missing, holds something other than a string,
    appears twice, or the text is not understood.
    """
    finder = _Finder(_tokens(text), dotted_key.split("."))
    finder.value(finder.path)
    if finder.pos != len(finder.tokens):
        raise Unsupported("text after the top-level value")
    if finder.found is None:
        raise Unsupported(f"no string value at {dotted_key}")
    token = finder.found
    return text[: token.start] + json.dumps(value, ensure_ascii=False) + text[token.end :]
