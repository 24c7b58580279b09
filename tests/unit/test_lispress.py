import pytest

from app.domain import lispress
from app.domain.lispress import LispressError, Str


def test_parse_nested_plan():
    sexp = lispress.parse('(Yield :output (Foo :bar #(String "dinner")))')

    assert sexp == ("Yield", ":output", ("Foo", ":bar", "#", ("String", Str("dinner"))))


def test_spacing_does_not_matter():
    compact = '(Yield :output (Foo :bar #(String "dinner party")))'
    spaced = '( Yield :output ( Foo :bar # ( String " dinner party " ) ) )'

    assert lispress.plans_equal(compact, spaced)


def test_different_strings_differ():
    assert not lispress.plans_equal('(Foo #(String "a"))', '(Foo #(String "b"))')


def test_normalize_renders_tokenized_form():
    normalized = lispress.normalize('(Yield :output (Foo :bar #(String "dinner")))')

    assert normalized == '( Yield :output ( Foo :bar # ( String " dinner " ) ) )'


def test_normalize_is_idempotent():
    once = lispress.normalize("(Yield :output (Foo :x #(Number 10) :y ^(Event) ^Unit))")

    assert lispress.normalize(once) == once


@pytest.mark.parametrize(
    "text, value",
    [
        ('(F "say \\"hi\\"")', 'say "hi"'),
        ('(F "a (b) c")', "a (b) c"),
        ('(F "Café Zoë 東京")', "Café Zoë 東京"),
        ('(F "back\\\\slash")', "back\\slash"),
    ],
)
def test_string_literals_round_trip(text, value):
    sexp = lispress.parse(text)

    assert sexp == ("F", Str(value))
    assert lispress.parse(lispress.render(sexp)) == sexp


def test_v2_type_annotation_prefix():
    sexp = lispress.parse("(^(Event) EmptyStructConstraint)")

    assert sexp == ("^", ("Event",), "EmptyStructConstraint")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty plan"),
        ("(Foo", "1 unclosed '('"),
        ("(Foo))", "unexpected ')' after the plan"),
        (")", "unbalanced ')'"),
        ('(Foo "bar)', "unterminated string literal"),
        ("(Foo) (Bar)", "unexpected '(' after the plan"),
    ],
)
def test_parse_rejects_malformed(text, message):
    with pytest.raises(LispressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lispress.parse(text)


def test_parse_prefix_ignores_trailing_text():
    text = '(Foo "x") and then "an unterminated quote'

    sexp, end = lispress.parse_prefix(text)

    assert sexp == ("Foo", Str("x"))
    assert text[end:] == ' and then "an unterminated quote'


def test_deep_nesting_does_not_recurse():
    depth = 5000
    text = "(F " * depth + ")" * depth

    assert lispress.parse(text) is not None


def test_function_names_skip_keywords():
    sexp = lispress.parse("(Yield :output (:start (singleton (Find :constraint (Today)))))")

    assert lispress.function_names(sexp) == {"Yield", "singleton", "Find", "Today"}
