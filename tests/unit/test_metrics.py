"""The evaluation figures on hand-made tables with known answers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from app.evaluation.metrics import (
    TokenPrices,
    auroc,
    cost_per_request_usd,
    delegation_precision,
    errors_caught,
    estimate_tokens,
    exact_match,
    exact_match_without_context,
    is_dependent,
    is_invalid_plan,
    percentile,
    perfect_router_accuracy,
    random_router_accuracy,
    tradeoff_curve,
)

MANAGER = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


def test_auroc_perfect_signal():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0


def test_auroc_reversed_signal():
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0


def test_auroc_random_signal():
    generator = random.Random(7)
    scores = [generator.random() for _ in range(20_000)]
    labels = [generator.random() < 0.4 for _ in range(20_000)]

    assert auroc(scores, labels) == pytest.approx(0.5, abs=0.02)


def test_auroc_ties_count_half():
    # Pairs (positive, negative): (0.5, 0.5) is a tie worth 1/2, (0.5, 0.1) and
    # (0.9, *) are wins: (1/2 + 1 + 1 + 1) / 4.
    assert auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)


def test_auroc_all_tied():
    assert auroc([0.3, 0.3, 0.3], [True, False, True]) == pytest.approx(0.5)


def test_auroc_leaves_out_missing():
    assert auroc([0.2, None, 0.1], [True, True, False]) == 1.0


def test_auroc_missing_negatives_undefined():
    assert auroc([0.2, None], [True, False]) is None


def test_auroc_all_correct_undefined():
    assert auroc([0.2, 0.7], [True, True]) is None


def test_auroc_all_wrong_undefined():
    assert auroc([0.2, 0.7], [False, False]) is None


def test_auroc_no_signal_undefined():
    assert auroc([None, None], [True, False]) is None


def test_auroc_length_mismatch():
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        auroc([0.1, 0.2], [True])


def test_exact_match_ignores_spacing():
    compact = "(Yield :output (FindManager :recipient (toRecipient (CurrentUser))))"

    assert exact_match(compact, MANAGER)


def test_exact_match_string_spacing():
    assert exact_match('(Say #(String "team  lunch"))', '( Say # ( String " team lunch " ) )')


def test_exact_match_different_plan():
    assert not exact_match("( Yield :output ( FindTeamOf :recipient ( CurrentUser ) ) )", MANAGER)


def test_exact_match_missing_plan():
    assert not exact_match(None, MANAGER)


def test_exact_match_unparsable_plan():
    assert not exact_match("( Yield :output", MANAGER)


def test_dependent_refer():
    assert is_dependent("( Yield :output ( :location ( refer ( Constraint[Event] ) ) ) )")


def test_dependent_revise():
    assert is_dependent("( Yield :output ( ReviseConstraint :new ( Today ) ) )")


def test_independent_plan():
    assert not is_dependent(MANAGER)


def ablation_record(dependent: bool, correct: bool) -> dict[str, bool]:
    return {"dependent": dependent, "final_correct_without_context": correct}


def test_without_context_by_dependency():
    records = [
        ablation_record(dependent=True, correct=False),
        ablation_record(dependent=True, correct=True),
        ablation_record(dependent=False, correct=True),
        ablation_record(dependent=False, correct=True),
        ablation_record(dependent=False, correct=False),
    ]

    figures = exact_match_without_context(records)

    assert figures is not None
    assert figures["final"] == pytest.approx(3 / 5)
    assert figures["dependent"] == pytest.approx(1 / 2)
    assert figures["independent"] == pytest.approx(2 / 3)


def test_without_context_no_dependent_turns():
    figures = exact_match_without_context([ablation_record(dependent=False, correct=True)])

    assert figures is not None
    assert figures["dependent"] is None
    assert figures["independent"] == 1.0


def test_without_context_absent_without_ablation():
    assert exact_match_without_context([{"dependent": True, "final_correct": True}]) is None


def test_without_context_no_turns():
    assert exact_match_without_context([]) is None


def test_invalid_plan_unknown_function():
    known = {"Yield", "FindManager", "toRecipient", "CurrentUser"}

    assert is_invalid_plan("( Yield :output ( MakeCoffee ) )", known)


def test_invalid_plan_unparsable():
    assert is_invalid_plan("( Yield", {"Yield"})


def test_valid_plan_known_functions():
    assert not is_invalid_plan(MANAGER, {"Yield", "FindManager", "toRecipient", "CurrentUser"})


def test_percentile_median_and_p95():
    values = [float(value) for value in range(1, 101)]

    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)


def test_percentile_single_value():
    assert percentile([12.0], 95) == 12.0


def test_percentile_no_values():
    assert percentile([], 50) is None


# Five turns: two delegated (one wrong, one right), three wrong small plans in all.
DELEGATED = [True, True, False, False, False]
SMALL_CORRECT = [False, True, False, False, True]


def test_delegation_precision_table():
    assert delegation_precision(DELEGATED, SMALL_CORRECT) == pytest.approx(0.5)


def test_errors_caught_table():
    assert errors_caught(DELEGATED, SMALL_CORRECT) == pytest.approx(1 / 3)


def test_delegation_precision_nothing_delegated():
    assert delegation_precision([False, False], [True, False]) is None


def test_errors_caught_nothing_wrong():
    assert errors_caught([True, False], [True, True]) is None


def test_tradeoff_no_delegation_is_small_accuracy():
    curve = tradeoff_curve([0.9, 0.2, 0.5, 0.7], [True, False, True, False])

    assert curve.delegated[0] == 0.0
    assert curve.accuracy[0] == pytest.approx(0.5)


def test_tradeoff_full_delegation_is_perfect():
    curve = tradeoff_curve([0.9, 0.2, 0.5, 0.7], [True, False, True, False])

    assert curve.delegated[-1] == 1.0
    assert curve.accuracy[-1] == pytest.approx(1.0)


def test_tradeoff_lowest_first():
    # Lowest first: 0.2 (wrong), 0.5 (right), 0.7 (wrong), 0.9 (right).
    curve = tradeoff_curve([0.9, 0.2, 0.5, 0.7], [True, False, True, False])

    assert list(curve.accuracy) == pytest.approx([0.5, 0.75, 0.75, 1.0, 1.0])


def test_tradeoff_ties_take_expected_value():
    # One tie of two turns, one of them wrong: delegating one catches half an error.
    curve = tradeoff_curve([0.4, 0.4], [True, False])

    assert list(curve.accuracy) == pytest.approx([0.5, 0.75, 1.0])


def test_router_references():
    shares = np.array([0.0, 0.25, 1.0])

    assert list(random_router_accuracy(0.6, shares)) == pytest.approx([0.6, 0.7, 1.0])
    assert list(perfect_router_accuracy(0.6, shares)) == pytest.approx([0.6, 0.85, 1.0])


def test_estimate_tokens_rounds_up():
    assert estimate_tokens(9) == 3


def test_cost_per_request():
    prices = TokenPrices(small=0.001, large_input=0.003, large_output=0.015)

    small, large = cost_per_request_usd(prices, 2000, 1000, 100)

    assert small == pytest.approx(0.002)
    assert large == pytest.approx(0.0045)
