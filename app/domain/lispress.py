"""Lispress plans as S-expressions: tokenize, parse, render and compare.

SMCalFlow writes its plans in Lispress, a Lisp-like syntax. Two dialects occur:
1.0 (`(Yield :output (Foo :bar #(String "x")))`, keyword arguments and `#(...)`
literals) and 2.0 (`(Yield (Foo "x"))`, positional arguments and `^Type`
annotations). Both are plain S-expressions, so one parser serves both.

The normalized form that the service returns puts one space between tokens:
every bracket, the literal prefix `#` and each string quote stands alone, as in
`( Yield :output ( Foo :bar # ( String " x y " ) ) )`. This is the tokenized
SMCalFlow 1.0 form that the fine-tuned small model emits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

__all__ = [
    "LispressError",
    "Sexp",
    "Str",
    "argument_names",
    "function_names",
    "normalize",
    "parse",
    "parse_prefix",
    "plans_equal",
    "render",
    "structure_problems",
    "tokenize",
]


class LispressError(ValueError):
    """A plan that is not a well-formed S-expression."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position}")
        self.position = position


@dataclass(frozen=True, slots=True)
class Str:
    """A string literal. Surrounding and repeated inner whitespace is not significant."""

    value: str


# An S-expression is a symbol (str), a string literal (Str) or a list of S-expressions.
Sexp = Union[str, Str, tuple["Sexp", ...]]  # noqa: UP007 (a recursive alias needs Union)

# Characters that end a symbol. `#` and `^` are prefixes only directly before a bracket
# (`#(String "x")`, `^(Event)`); elsewhere they belong to the symbol (`^Unit`, `#foo`).
_SYMBOL = re.compile(r'[^\s()"]+')
_WHITESPACE = re.compile(r"\s+")
_PREFIXES = ("#", "^")


def _clean_string(raw: str) -> str:
    return _WHITESPACE.sub(" ", raw).strip()


def tokenize(text: str) -> list[str | Str]:
    """Split Lispress text into bracket, prefix, symbol and string tokens.

    Strings may contain brackets, escaped quotes (`\\"`) and any Unicode text.
    Raises LispressError on an unterminated string.
    """
    return [token for token, _ in _iter_tokens(text)]


def _iter_tokens(text: str) -> Iterator[tuple[str | Str, int]]:
    """Yield each token with the index just past its last character, lazily."""
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char.isspace():
            position += 1
        elif char in "()" or (char in _PREFIXES and text.startswith("(", position + 1)):
            position += 1
            yield char, position
        elif char == '"':
            value, position = _read_string(text, position)
            yield Str(value), position
        else:
            match = _SYMBOL.match(text, position)
            assert match is not None  # any other character starts a symbol
            position = match.end()
            yield match.group(), position


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Read the string literal whose opening quote is at `start`; return it and the next index."""
    chars: list[str] = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            chars.append(text[position + 1])
            position += 2
        elif char == '"':
            return _clean_string("".join(chars)), position + 1
        else:
            chars.append(char)
            position += 1
    raise LispressError("unterminated string literal", start)


def parse(text: str) -> Sexp:
    """Parse exactly one S-expression; raise LispressError on anything else."""
    return _parse(text)


# The parsed form is immutable, and the same plan text is parsed by several stages of a
# request (extraction, the plan check, the confidence) and again by later requests.
@functools.lru_cache(maxsize=8192)
def _parse(text: str) -> Sexp:
    tokens = _iter_tokens(text)
    sexp, end = _read_sexp(tokens)
    for token, _ in tokens:
        raise LispressError(f"unexpected {_describe(token)} after the plan", end)
    return sexp


def parse_prefix(text: str) -> tuple[Sexp, int]:
    """Parse the first complete S-expression of `text`, ignoring whatever follows it.

    Returns the expression and the index in `text` just past its end. Text
    after the expression is not even tokenized, so it may be anything.
    """
    return _read_sexp(_iter_tokens(text))


def _read_sexp(tokens: Iterator[tuple[str | Str, int]]) -> tuple[Sexp, int]:
    """Consume tokens up to the end of one S-expression."""
    # An explicit stack instead of recursion: model output can nest arbitrarily deep.
    stack: list[list[Sexp]] = []
    end = 0
    for token, end in tokens:
        if token == "(":
            stack.append([])
            continue
        if token == ")":
            if not stack:
                raise LispressError("unbalanced ')'", end - 1)
            finished: Sexp = tuple(stack.pop())
        else:
            finished = token
        if not stack:
            return finished, end
        stack[-1].append(finished)
    if stack:
        raise LispressError(f"{len(stack)} unclosed '('", end)
    raise LispressError("empty plan", end)


def _describe(token: str | Str) -> str:
    return "string literal" if isinstance(token, Str) else repr(token)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def render(sexp: Sexp) -> str:
    """Render an S-expression in the normalized, space-separated form."""
    parts: list[str] = []
    _render_into(sexp, parts)
    return " ".join(parts)


def _render_into(sexp: Sexp, parts: list[str]) -> None:
    if isinstance(sexp, Str):
        parts.append(f'" {_escape(sexp.value)} "' if sexp.value else '" "')
    elif isinstance(sexp, str):
        parts.append(sexp)
    else:
        parts.append("(")
        for child in sexp:
            _render_into(child, parts)
        parts.append(")")


def normalize(text: str) -> str:
    """Parse a plan and render it in the normalized form."""
    return render(parse(text))


def plans_equal(left: str, right: str) -> bool:
    """Exact match: both plans parse and their S-expressions are equal."""
    try:
        return parse(left) == parse(right)
    except LispressError:
        return False


def function_names(sexp: Sexp) -> set[str]:
    """Collect the symbols in function position (the head of each list), keywords excluded."""
    names: set[str] = set()
    pending = [sexp]
    while pending:
        node = pending.pop()
        if isinstance(node, tuple):
            if node and isinstance(node[0], str) and not node[0].startswith(":"):
                names.add(node[0])
            pending.extend(node)
    return names


def argument_names(sexp: Sexp) -> set[tuple[str, str]]:
    """Collect (function, keyword) for each keyword argument of a function call."""
    pairs: set[tuple[str, str]] = set()
    pending = [sexp]
    while pending:
        node = pending.pop()
        if not isinstance(node, tuple):
            continue
        pending.extend(node)
        if node and _is_function(node[0]):
            pairs.update((node[0], item) for item in node[1:] if _is_keyword(item))
    return pairs


def structure_problems(sexp: Sexp) -> list[str]:
    """Describe what makes a parsed plan ill-formed beyond its brackets; empty when nothing.

    A list starts with a function name or, as an accessor such as `( :id x )`,
    with a keyword and exactly one argument. In a call, every keyword is
    followed by its value.
    """
    problems: list[str] = []
    pending = [sexp]
    while pending:
        node = pending.pop()
        if not isinstance(node, tuple):
            continue
        pending.extend(node)
        if not node:
            problems.append("an empty list")
        elif _is_keyword(node[0]):
            if len(node) != 2:
                problems.append(f"accessor {node[0]} with {len(node) - 1} arguments instead of 1")
        elif not _is_function(node[0]):
            problems.append("a list that does not start with a function name")
        else:
            for position, item in enumerate(node[1:], start=1):
                if _is_keyword(item) and (
                    position + 1 == len(node) or _is_keyword(node[position + 1])
                ):
                    problems.append(f"{node[0]} argument {item} without a value")
    return problems


def _is_keyword(node: Sexp) -> bool:
    return isinstance(node, str) and node.startswith(":")


def _is_function(node: Sexp) -> bool:
    return isinstance(node, str) and not node.startswith(":")
