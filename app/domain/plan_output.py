"""Extract a plan from a model's raw output, whatever wrapping the model chose.

Models are asked for the bare plan, but some answer in a code fence, after a
sentence of prose, or as JSON (`{"plan": "..."}`), where every quote inside
the plan must be escaped and sometimes is not. The plan is therefore never
read with a JSON or regex trick alone: the text is scanned for S-expressions
with the Lispress tokenizer, which understands string literals.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.domain import lispress

__all__ = ["ExtractedPlan", "extract_plan", "logprob_confidence"]

_CODE_FENCE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ExtractedPlan:
    """The plan found in a model's output, or the reason there is none."""

    plan: str | None  # normalized; None when no plan could be read
    error: str | None = None
    wrapped: bool = False  # True when the model ignored the bare-plan format

    @property
    def valid(self) -> bool:
        return self.plan is not None


def extract_plan(text: str) -> ExtractedPlan:
    """Find the plan in `text` and return it normalized."""
    stripped = text.strip()
    if not stripped:
        return ExtractedPlan(None, "the model returned no text")

    candidate, wrapped = _unwrap(stripped)
    plan, error, whole = _largest_sexp(candidate)
    if plan is None and candidate != stripped:
        plan, error, whole = _largest_sexp(stripped)
    if plan is None:
        return ExtractedPlan(None, error, wrapped)
    return ExtractedPlan(plan, None, wrapped or not whole)


def _unwrap(text: str) -> tuple[str, bool]:
    """Strip a code fence or a JSON object around the plan, if there is one."""
    fence = _CODE_FENCE.search(text)
    if fence:
        text = fence.group(1).strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            return text, True  # often unescaped quotes inside the plan: scan the text instead
        if isinstance(document, dict):
            for key in ("plan", "program", "lispress", "output"):
                if isinstance(document.get(key), str):
                    return document[key], True
        return text, True
    return text, fence is not None


def _largest_sexp(text: str) -> tuple[str | None, str | None, bool]:
    """Parse every top-level S-expression in `text` and keep the one with the most tokens.

    Prose around the plan may hold short bracketed asides such as "(in Lispress)";
    the plan is the largest expression. Returns the rendered plan or None, the
    reason when None, and whether the plan spans the whole text.
    """
    best: lispress.Sexp | None = None
    best_size = 0
    best_span = (0, 0)
    first_error: str | None = None
    position = text.find("(")
    while position != -1:
        try:
            sexp, length = lispress.parse_prefix(text[position:])
        except lispress.LispressError as error:
            first_error = first_error or f"the plan is not a well-formed S-expression: {error}"
            break  # an unclosed expression swallows the rest of the text
        if not isinstance(sexp, tuple):
            break
        size = _token_count(sexp)
        if size > best_size:
            best, best_size, best_span = sexp, size, (position, position + length)
        position = text.find("(", position + length)
    if best is None:
        return None, first_error or "the output contains no plan (no '(' found)", False
    return lispress.render(best), None, best_span == (0, len(text))


def _token_count(sexp: lispress.Sexp) -> int:
    if isinstance(sexp, tuple):
        return 2 + sum(_token_count(child) for child in sexp)
    return 1


def logprob_confidence(token_logprobs: Sequence[float] | None) -> float | None:
    """Return the geometric-mean token probability, exp(mean log-probability), in [0, 1].

    Returns None when the backend reported no log-probabilities.
    """
    if not token_logprobs:
        return None
    finite = [value for value in token_logprobs if math.isfinite(value)]
    if len(finite) < len(token_logprobs):
        return 0.0  # a -inf token: the model considered its own output impossible
    mean = sum(finite) / len(finite)
    return min(1.0, max(0.0, math.exp(mean)))
