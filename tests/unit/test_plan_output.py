import json
import math

import pytest

from app.domain.plan_output import extract_plan, logprob_confidence

PLAN = '( Yield :output ( Foo :subject # ( String " Café \\"Zoë\\" (team) " ) ) )'


def test_bare_plan_is_not_wrapped():
    extracted = extract_plan(PLAN)

    assert extracted.plan == PLAN
    assert not extracted.wrapped


@pytest.mark.parametrize(
    "output",
    [
        f"```lisp\n{PLAN}\n```",
        f"Here is the plan (in Lispress):\n{PLAN}\nLet me know if it helps.",
        json.dumps({"plan": PLAN}),
    ],
    ids=["code-fence", "prose", "escaped-json"],
)
def test_wrapped_plan_is_recovered(output):
    extracted = extract_plan(output)

    assert extracted.plan == PLAN
    assert extracted.wrapped


def test_json_with_unescaped_quotes_is_recovered():
    output = '{"plan": "(Yield :output (Foo :subject #(String "dinner")))", "confidence": 0.9}'

    extracted = extract_plan(output)

    assert extracted.plan == '( Yield :output ( Foo :subject # ( String " dinner " ) ) )'


@pytest.mark.parametrize(
    "output, reason",
    [
        ("", "no text"),
        ("I cannot help with that.", "no plan"),
        ("( Yield :output ( Foo", "unclosed"),
        ('( Yield :output ( Foo " unterminated', "unterminated string"),
    ],
)
def test_unusable_output_has_reason(output, reason):
    extracted = extract_plan(output)

    assert extracted.plan is None
    assert not extracted.valid
    assert reason in extracted.error


def test_confidence_is_geometric_mean():
    confidence = logprob_confidence([math.log(0.5), math.log(0.5), math.log(1.0)])

    assert confidence == pytest.approx(0.25 ** (1 / 3))


def test_confidence_without_logprobs_is_none():
    assert logprob_confidence(None) is None
    assert logprob_confidence([]) is None


def test_confidence_of_impossible_token_is_zero():
    assert logprob_confidence([-0.1, float("-inf")]) == 0.0
