"""Carry names and numbers from a request into a similar example's plan.

An example "lunch with Jennifer at 3" has a plan holding `" Jennifer "` and
`# ( Number 3 )`. For the request "lunch with Beck at 4", the same plan with
Beck and 4 in their place is a strong candidate answer. The two utterances
are aligned word by word; where a run of the example's words that the plan
quotes (a string literal, or a number) was replaced in the request, the plan
gets the request's words instead. Anything the alignment cannot explain is
left as it was.
"""

from __future__ import annotations

import difflib
import functools
import re

from app.domain.lispress import LispressError, Sexp, Str, parse, render

__all__ = ["adapt_plan", "utterance_words"]

# Digits and letters split apart, so that "3pm" aligns as "3" and "pm".
_WORD = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+(?:'[^\W\d_]+)?")


def utterance_words(text: str) -> list[str]:
    """Split an utterance into words and numbers, keeping their case."""
    return _WORD.findall(text)


def adapt_plan(example_utterance: str, example_plan: str, utterance: str) -> str:
    """Return `example_plan` with the literals that differ between the utterances replaced.

    The plan comes back unchanged, as normalized text, when nothing can be
    carried over, and as given when it does not parse.
    """
    parsed = _parsed_plan(example_plan)
    if parsed is None:
        return example_plan
    tree, normalized, literals = parsed
    if not literals:
        return normalized
    replacements = _replacements(_words(example_utterance), _words(utterance), literals)
    if not replacements:
        return normalized
    return render(_substitute(tree, replacements))


# Bank plans recur in every request that retrieves their example, and parsing them
# cost more than everything else in a request with an instant model.
@functools.lru_cache(maxsize=65_536)
def _parsed_plan(plan: str) -> tuple[Sexp, str, frozenset[str]] | None:
    """Return the plan's tree, its normalized text and its literals; None when it does not parse."""
    try:
        tree = parse(plan)
    except LispressError:
        return None
    return tree, render(tree), frozenset(_literals(tree))


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


# A request's words are aligned with each of its nearest examples, whose words recur
# across requests: split each text once.
@functools.lru_cache(maxsize=16_384)
def _words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the text's words and the same words lower-cased."""
    words = tuple(utterance_words(text))
    return words, tuple(word.lower() for word in words)


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def _literals(tree: Sexp) -> set[str]:
    """Return the lower-cased string literals and the numbers of `( Number n )` in a plan."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Str):
            found.add(" ".join(node.value.split()).lower())
        elif isinstance(node, tuple):
            if len(node) == 2 and node[0] == "Number" and isinstance(node[1], str):
                found.add(node[1])
            stack.extend(node)
    return found


def _replacements(
    old_words: tuple[tuple[str, ...], tuple[str, ...]],
    new_words: tuple[tuple[str, ...], tuple[str, ...]],
    literals: frozenset[str],
) -> dict[str, str]:
    """Map each replaced run of example words that a literal contains to the request's words.

    The keys are lower-cased. A run that is a whole literal replaces it, and a
    run inside a longer string literal replaces only those words of it.
    """
    (old, old_lower), (new, new_lower) = old_words, new_words
    matcher = difflib.SequenceMatcher(a=old_lower, b=new_lower, autojunk=False)
    replacements: dict[str, str] = {}
    for tag, old_start, old_end, new_start, new_end in matcher.get_opcodes():
        if tag == "equal":
            # The same words, maybe in another case: "cher roydon" in the example and
            # "Cher Roydon" in the request. Each word keeps the request's case.
            for old_word, new_word in zip(
                old[old_start:old_end], new[new_start:new_end], strict=True
            ):
                if old_word != new_word and any(
                    _contains_words(literal, old_word.lower()) for literal in literals
                ):
                    replacements.setdefault(old_word.lower(), new_word)
            continue
        if tag != "replace":
            continue
        source = " ".join(old[old_start:old_end]).lower()
        target = " ".join(new[new_start:new_end])
        if _is_number(source):
            # "until 6" -> "until 5:00 pm": the number is the first word of the new run.
            target = new[new_start]
            if not _is_number(target):
                continue  # a number only ever replaces a number
        elif _is_number(target):
            continue
        if any(_contains_words(literal, source) for literal in literals):
            replacements[source] = target
    return replacements


def _contains_words(literal: str, words: str) -> bool:
    if _is_number(words):
        return literal == words
    return f" {words} " in f" {literal} "


def _substitute(node: Sexp, replacements: dict[str, str]) -> Sexp:
    if isinstance(node, Str):
        value = " ".join(node.value.split())
        # Upper-case literals name constants such as DayOfWeek " FRIDAY ": keep the case.
        shout = value.isupper()
        for source, target in replacements.items():
            if not _is_number(source):
                text = target.upper() if shout else target
                pattern = rf"(?<!\S){re.escape(source)}(?!\S)"
                value = re.sub(pattern, lambda _, text=text: text, value, flags=re.IGNORECASE)
        return Str(value)
    if isinstance(node, tuple):
        if len(node) == 2 and node[0] == "Number" and isinstance(node[1], str):
            return ("Number", replacements.get(node[1], node[1]))
        return tuple(_substitute(child, replacements) for child in node)
    return node
