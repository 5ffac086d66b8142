"""``-k`` expressions: pytest's keyword grammar over variant ids and their keywords.

``softmax and not jax``, ``models/ or (preprocessing and float16)``: a bare word matches when it is
a case-insensitive substring of the variant id or equals one of its keywords (tags, backend,
implementation, device, dtype, mode); ``and``, ``or``, ``not`` and parentheses combine them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from detharness.errors import UsageError

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")

Matcher = Callable[[str, Iterable[str]], bool]


def compile_expression(expression: str) -> Matcher:
    """Parse ``expression`` once; the result tells whether a (variant id, keywords) pair matches."""
    tokens: list[str] = _TOKEN.findall(expression)
    if not tokens:
        raise UsageError("-k: empty expression")
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise UsageError(f"-k {expression!r}: unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    Node = Callable[[str, frozenset[str]], bool]

    def parse_or() -> Node:
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda t, k: a(t, k) or b(t, k))(left, right)
        return left

    def parse_and() -> Node:
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda t, k: a(t, k) and b(t, k))(left, right)
        return left

    def parse_not() -> Node:
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda t, k: not inner(t, k)
        return parse_atom()

    def parse_atom() -> Node:
        token = take()
        if token == "(":
            node = parse_or()
            if take() != ")":
                raise UsageError(f"-k {expression!r}: expected ')'")
            return node
        if token in {")", "and", "or", "not"}:
            raise UsageError(f"-k {expression!r}: unexpected {token!r}")
        word = token.lower()
        return lambda t, k: word in t or word in k

    tree = parse_or()
    if pos != len(tokens):
        raise UsageError(f"-k {expression!r}: unexpected {tokens[pos]!r}")

    def matches(text: str, keywords: Iterable[str] = ()) -> bool:
        return tree(text.lower(), frozenset(k.lower() for k in keywords))

    return matches
