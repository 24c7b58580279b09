"""Plan structure beyond balanced brackets, and the arguments that functions take."""

from __future__ import annotations

from app.domain.lispress import argument_names, parse, structure_problems


def test_well_formed_plan_has_no_problem():
    plan = "( Yield :output ( :id ( singleton ( :results ( FindEventWrapperWithDefaults ) ) ) ) )"

    assert structure_problems(parse(plan)) == []


def test_keyword_without_value():
    problems = structure_problems(parse("( Yield :output )"))

    assert problems == ["Yield argument :output without a value"]


def test_keyword_followed_by_keyword():
    problems = structure_problems(parse("( Find :a :b ( X ) )"))

    assert problems == ["Find argument :a without a value"]


def test_list_of_keywords_only():
    assert structure_problems(parse("( :a :b :c )")) == [
        "accessor :a with 2 arguments instead of 1"
    ]


def test_list_without_function():
    assert structure_problems(parse('( " text " )')) == [
        "a list that does not start with a function name"
    ]


def test_argument_names_pair_function_and_keyword():
    plan = parse("( Yield :output ( Find :constraint ( X ) ) )")

    assert argument_names(plan) == {("Yield", ":output"), ("Find", ":constraint")}
