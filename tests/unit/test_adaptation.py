"""Carrying names and numbers from a request into a similar example's plan."""

from __future__ import annotations

from app.domain.adaptation import adapt_plan, utterance_words

LUNCH = (
    '( Yield :output ( Create :who # ( PersonName " Jennifer " ) '
    ":at ( NumberPM :number # ( Number 3 ) ) ) )"
)


def test_words_split_numbers_from_letters():
    assert utterance_words("Lunch at 3pm, Jennifer's team") == [
        "Lunch",
        "at",
        "3",
        "pm",
        "Jennifer's",
        "team",
    ]


def test_name_and_number_are_carried_over():
    plan = adapt_plan("lunch with Jennifer at 3pm", LUNCH, "lunch with Beck at 4pm")

    assert plan == (
        '( Yield :output ( Create :who # ( PersonName " Beck " ) '
        ":at ( NumberPM :number # ( Number 4 ) ) ) )"
    )


def test_adapt_partial_string_literal():
    plan = adapt_plan(
        "book the Team Lunch on Friday",
        '( Create # ( String " Team Lunch " ) )',
        "book the Team Dinner on Friday",
    )

    assert plan == '( Create # ( String " Team Dinner " ) )'


def test_adapt_word_never_replaces_number():
    plan = adapt_plan("add 3 people", "( F # ( Number 3 ) )", "add four people")

    assert plan == "( F # ( Number 3 ) )"


def test_words_the_plan_does_not_quote_change_nothing():
    plan = adapt_plan("lunch with Jennifer at 3pm", LUNCH, "dinner with Jennifer at 3pm")

    assert plan == LUNCH


def test_adapt_other_numbers_unchanged():
    plan = adapt_plan(
        "move it by 2 hours", "( F # ( Number 2 ) # ( Number 30 ) )", "move it by 5 hours"
    )

    assert plan == "( F # ( Number 5 ) # ( Number 30 ) )"


def test_plan_is_returned_normalized():
    assert adapt_plan("who is my boss", "(Yield :output (FindManager))", "who is my boss") == (
        "( Yield :output ( FindManager ) )"
    )


def test_unparseable_plan_is_returned_as_given():
    assert adapt_plan("a", "( broken", "b") == "( broken"


def test_upper_case_constants_stay_upper_case():
    plan = adapt_plan(
        "lunch on monday at 3",
        '( F # ( DayOfWeek " MONDAY " ) # ( Number 3 ) )',
        "lunch on Friday at 4",
    )

    assert plan == '( F # ( DayOfWeek " FRIDAY " ) # ( Number 4 ) )'


def test_same_words_take_the_request_case():
    plan = adapt_plan(
        "add a meeting with cher roydon",
        '( F # ( PersonName " cher roydon " ) )',
        "Add a meeting with Cher Roydon",
    )

    assert plan == '( F # ( PersonName " Cher Roydon " ) )'


def test_number_followed_by_more_words_is_carried_over():
    plan = adapt_plan("make it until 6", "( F # ( Number 6 ) )", "make it until 5:00 pm")

    assert plan == "( F # ( Number 5 ) )"
