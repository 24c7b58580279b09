"""Figures for judging plans and delegation decisions: exact match, AUROC, percentiles, costs.

Pure functions over plain values, so they can be tested on hand-made tables.
A turn can lack a confidence signal (None), for example when the small model
timed out. AUROC leaves such turns out, because a signal cannot be judged where
it is missing. The trade-off curve delegates them first, as the service sends a
request without a small-model answer to the large model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.domain.lispress import LispressError, function_names, parse, plans_equal

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_TOKEN_PRICES",
    "SIGNALS",
    "STAGES",
    "TokenPrices",
    "TradeoffCurve",
    "auroc",
    "cost_per_request_usd",
    "delegation_precision",
    "errors_caught",
    "estimate_tokens",
    "exact_match",
    "exact_match_without_context",
    "is_dependent",
    "is_invalid_plan",
    "mean",
    "percentile",
    "summarize",
    "perfect_router_accuracy",
    "random_router_accuracy",
    "tradeoff_curve",
]

# "confidence" is what the delegation policy was given: calibrated when a calibration is loaded.
SIGNALS = ("logprobs", "retrieval", "agreement", "margin", "confidence")
STAGES = ("retrieval", "small_model", "large_model", "total")

# The usual rule of thumb for English text and code with BPE tokenizers.
CHARS_PER_TOKEN = 4


def exact_match(predicted: str | None, gold: str) -> bool:
    """Return True when `predicted` parses to the same S-expression as `gold`."""
    return predicted is not None and plans_equal(predicted, gold)


def is_dependent(gold: str) -> bool:
    """Return True when a gold plan uses `refer` or a `Revise...` function.

    Such a turn depends on earlier turns of the dialogue.
    """
    names = function_names(parse(gold))
    return any(name == "refer" or name.startswith("Revise") for name in names)


def exact_match_without_context(
    records: Sequence[dict[str, Any]],
) -> dict[str, float | None] | None:
    """Return exact match of the plans made with no dialogue context, overall and by dependency.

    Returns None unless every record has `final_correct_without_context`, which
    run.py writes only when the context ablation ran.
    """
    if not records or not all("final_correct_without_context" in record for record in records):
        return None
    return {
        "final": mean(record["final_correct_without_context"] for record in records),
        "dependent": mean(
            record["final_correct_without_context"] for record in records if record["dependent"]
        ),
        "independent": mean(
            record["final_correct_without_context"] for record in records if not record["dependent"]
        ),
    }


def is_invalid_plan(plan: str | None, known_functions: set[str]) -> bool:
    """Return True when `plan` is missing, does not parse, or calls a function not in the set."""
    if plan is None:
        return True
    try:
        names = function_names(parse(plan))
    except LispressError:
        return True
    return not names <= known_functions


def mean(flags: Iterable[bool]) -> float | None:
    """Return the share of True values, or None for no values."""
    values = list(flags)
    return sum(values) / len(values) if values else None


def _scores_array(scores: Sequence[float | None]) -> np.ndarray:
    return np.array([-math.inf if score is None else score for score in scores], dtype=float)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks, tied values sharing the average of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def auroc(scores: Sequence[float | None], positives: Sequence[bool]) -> float | None:
    """Return the area under the ROC curve of `scores` separating positives from negatives.

    It is the probability that a random positive scores above a random negative,
    ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg).
    Turns whose score is None are left out. Returns None when it is undefined:
    no positive or no negative among the turns with a score.
    """
    if len(scores) != len(positives):
        raise ValueError(f"{len(scores)} scores but {len(positives)} labels")
    scored = [
        (score, label) for score, label in zip(scores, positives, strict=True) if score is not None
    ]
    labels = np.asarray([label for _, label in scored], dtype=bool)
    positive_count = int(labels.sum())
    negative_count = len(labels) - positive_count
    if positive_count == 0 or negative_count == 0:
        return None

    ranks = _average_ranks(np.asarray([score for score, _ in scored], dtype=float))
    rank_sum = float(ranks[labels].sum())
    u_statistic = rank_sum - positive_count * (positive_count + 1) / 2
    return u_statistic / (positive_count * negative_count)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the q-th percentile (linear interpolation between ranks), or None for no values."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def delegation_precision(delegated: Sequence[bool], small_correct: Sequence[bool]) -> float | None:
    """Return the share of delegated turns whose small plan was wrong (None: none delegated)."""
    return mean(
        not correct for wanted, correct in zip(delegated, small_correct, strict=True) if wanted
    )


def errors_caught(delegated: Sequence[bool], small_correct: Sequence[bool]) -> float | None:
    """Return the share of the small model's wrong plans that were delegated (None: none wrong)."""
    return mean(
        wanted for wanted, correct in zip(delegated, small_correct, strict=True) if not correct
    )


@dataclass(frozen=True, slots=True)
class TradeoffCurve:
    """Final exact match (`accuracy`) after delegating each share (`delegated`) of the turns."""

    delegated: np.ndarray
    accuracy: np.ndarray


def tradeoff_curve(scores: Sequence[float | None], small_correct: Sequence[bool]) -> TradeoffCurve:
    """Compute accuracy when the k lowest-scoring turns are delegated, for k = 0..n.

    Assumes the large model is right on every delegated turn. Turns with equal
    scores are delegated in random order, so within a tie the curve takes the
    expected value: each delegated tied turn catches the tie's share of errors.
    """
    if len(scores) != len(small_correct):
        raise ValueError(f"{len(scores)} scores but {len(small_correct)} labels")
    total = len(scores)
    if total == 0:
        return TradeoffCurve(np.array([0.0]), np.array([math.nan]))
    values = _scores_array(scores)
    wrong = ~np.asarray(small_correct, dtype=bool)

    caught = np.zeros(total + 1)
    k = 0
    for value in np.unique(values):
        tied = values == value
        size = int(tied.sum())
        errors_per_turn = float(wrong[tied].sum()) / size
        for step in range(1, size + 1):
            caught[k + step] = caught[k] + step * errors_per_turn
        k += size

    small_correct_count = total - int(wrong.sum())
    accuracy = (small_correct_count + caught) / total
    delegated = np.arange(total + 1) / total
    return TradeoffCurve(delegated, accuracy)


def random_router_accuracy(small_accuracy: float, delegated: np.ndarray) -> np.ndarray:
    """Return the expected accuracy of delegating a random share of the turns."""
    return small_accuracy + delegated * (1.0 - small_accuracy)


def perfect_router_accuracy(small_accuracy: float, delegated: np.ndarray) -> np.ndarray:
    """Return the accuracy of a router that delegates the wrong plans first."""
    return np.minimum(1.0, small_accuracy + delegated)


def estimate_tokens(characters: int) -> int:
    """Estimate the token count of a text from its length, at CHARS_PER_TOKEN characters a token."""
    return math.ceil(characters / CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Prices in US dollars per 1,000 tokens."""

    small: float
    large_input: float
    large_output: float


# The small model is self-hosted, so its compute is not priced. The large-model prices are
# Anthropic's list prices for Claude 3.5 Sonnet at its 2024 release (3 and 15 USD per
# million input and output tokens). NOTE: not checked against current Bedrock pricing.
DEFAULT_TOKEN_PRICES = TokenPrices(small=0.0, large_input=0.003, large_output=0.015)


def cost_per_request_usd(
    prices: TokenPrices, small_tokens: int, large_input_tokens: int, large_output_tokens: int
) -> tuple[float, float]:
    """Return the small-model and the large-model cost of one request, in US dollars."""
    small = small_tokens * prices.small / 1000
    large = (
        large_input_tokens * prices.large_input + large_output_tokens * prices.large_output
    ) / 1000
    return small, large


def summarize(
    records: list[dict[str, Any]], prices: TokenPrices, *, large_configured: bool
) -> dict[str, Any]:
    """Compute report.json's figures from the per-turn records that run.py writes to turns.jsonl."""
    small_correct = [record["small_correct"] for record in records]
    delegated = [record["delegated"] for record in records]
    large_turns = [
        record["large_correct"] for record in records if record["large_correct"] is not None
    ]
    answered = [record for record in records if record["small_answered"]]

    return {
        "turns": len(records),
        "failed_turns": sum(record["error"] is not None for record in records),
        "exact_match": {
            "small": mean(small_correct),
            "final": mean(record["final_correct"] for record in records),
            "large": mean(large_turns) if large_configured else None,
            # The small model's own plan, on the turns where it ran.
            "generated": mean(
                record["generated_correct"]
                for record in records
                if record.get("generated_correct") is not None
            ),
            # The context-ranked nearest example's adapted plan, with no model.
            "lookup": mean(record["lookup_correct"] for record in records),
        },
        "origins": _origins(records),
        "delegation_rate": mean(delegated),
        "confidence_auroc": {
            signal: auroc([record["signals"].get(signal) for record in records], small_correct)
            for signal in SIGNALS
        },
        "delegation_precision": delegation_precision(delegated, small_correct),
        "errors_caught": errors_caught(delegated, small_correct),
        "invalid_plans": mean(record["small_invalid"] for record in answered),
        "floor_exact_match": mean(record["floor_correct"] for record in records),
        "final_over_floor": _ratio(
            mean(record["final_correct"] for record in records),
            mean(record["floor_correct"] for record in records),
        ),
        "exact_match_by_dependency": {
            kind: mean(
                record["final_correct"] for record in records if record["dependent"] == dependent
            )
            for kind, dependent in (("dependent", True), ("independent", False))
        },
        "exact_match_without_context": exact_match_without_context(records),
        "turns_by_dependency": {
            "dependent": sum(record["dependent"] for record in records),
            "independent": sum(not record["dependent"] for record in records),
        },
        "latency_ms": _latency(records),
        "cost_per_1000_requests_usd": _cost(records, prices),
    }


def _latency(records: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    latency: dict[str, dict[str, float | None]] = {}
    for stage in STAGES:
        values = [
            record["timings_ms"][stage] for record in records if stage in record["timings_ms"]
        ]
        latency[stage] = {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "count": len(values),
        }
    return latency


def _cost(records: list[dict[str, Any]], prices: TokenPrices) -> dict[str, Any]:
    small_total = large_total = 0.0
    for record in records:
        tokens = record["tokens"]
        small, large = cost_per_request_usd(
            prices, tokens["small"], tokens["large_input"], tokens["large_output"]
        )
        small_total += small
        large_total += large
    per_thousand = 1000 / len(records)
    return {
        "small": round(small_total * per_thousand, 6),
        "large": round(large_total * per_thousand, 6),
        "total": round((small_total + large_total) * per_thousand, 6),
        "prices_usd_per_1k_tokens": {
            "small": prices.small,
            "large_input": prices.large_input,
            "large_output": prices.large_output,
        },
        "small_token_counts": _basis({record["tokens"]["small_basis"] for record in records}),
        "large_token_counts": _basis({record["tokens"]["large_basis"] for record in records}),
    }


def _basis(kinds: set[str]) -> str:
    kinds.discard("none")
    if not kinds:
        return "no calls"
    if kinds == {"reported"}:
        return "reported by the backend"
    if kinds == {"projected"}:
        return (
            f"projected: no large model ran, so each delegated turn is priced with its prompt "
            f"and the gold plan at {CHARS_PER_TOKEN} characters per token"
        )
    return (
        f"partly estimated at {CHARS_PER_TOKEN} characters per token where the "
        f"backend reported no count ({', '.join(sorted(kinds))})"
    )


def _origins(records: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Count the first answers by origin, with the exact match of each group."""
    groups: dict[str, list[bool]] = {}
    for record in records:
        groups.setdefault(record.get("origin") or "none", []).append(record["small_correct"])
    return {
        origin: {"turns": len(flags), "exact_match": mean(flags)}
        for origin, flags in sorted(groups.items())
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)
