import pytest

from app.domain.dialogue import Example, Turn
from app.domain.retrieval import ExampleIndex, word_tokens

EXAMPLES = [
    Example("lunch", "Schedule lunch with Jennifer tomorrow at noon", "( Lunch )"),
    Example("dinner", "Book dinner with my team on Friday", "( Dinner )"),
    Example("weather", "What is the weather in Paris tomorrow?", "( Weather )"),
    Example("manager", "Who is my manager?", "( Manager )"),
    Example("lunch-copy", "schedule LUNCH with Jennifer tomorrow at noon", "( Lunch )"),
]


@pytest.fixture(scope="module")
def index() -> ExampleIndex:
    return ExampleIndex(EXAMPLES)


def test_word_tokens_lowercase_and_split():
    assert word_tokens("Who's my Manager?") == ["who", "s", "my", "manager"]


def test_nearest_example_first(index):
    results = index.search("set up lunch with Jennifer at noon", k=3)

    assert results[0].example.id == "lunch"


def test_identical_utterance_has_similarity_one(index):
    results = index.search("Who is my manager?", k=1)

    assert results[0].example.id == "manager"
    assert results[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_similarities_descend(index):
    similarities = [result.similarity for result in index.search("lunch tomorrow in Paris", k=4)]

    assert similarities == sorted(similarities, reverse=True)
    assert all(0.0 < similarity <= 1.0 for similarity in similarities)


def test_duplicate_utterance_and_plan_returned_once(index):
    ids = [result.example.id for result in index.search("schedule lunch with Jennifer", k=5)]

    assert "lunch" in ids
    assert "lunch-copy" not in ids


def test_no_shared_word_returns_nothing(index):
    assert index.search("xylophone quartz", k=3) == []


def test_k_limits_results(index):
    assert len(index.search("my tomorrow with", k=2)) == 2


def test_zero_k_returns_nothing(index):
    assert index.search("lunch", k=0) == []


def test_empty_bank_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        ExampleIndex([])


def test_large_bank_finds_planted_example():
    filler = [
        Example(f"e{i}", f"meeting number {i} with person {i % 97} on day {i % 31}", "( F )")
        for i in range(10_000)
    ]
    planted = Example("planted", "cancel the quarterly budget review with Priya", "( Delete )")
    index = ExampleIndex([*filler, planted])

    results = index.search("please cancel the budget review with Priya", k=8)

    assert results[0].example.id == "planted"
    assert len(results) == 8


def test_previous_turn_ranks_equal_utterances():
    examples = [
        Example(
            "yes-create", "yes", "( Create )", Turn("book lunch", None, "Does this look good?")
        ),
        Example(
            "yes-delete", "yes", "( Delete )", Turn("cancel my sync", None, "Delete this one?")
        ),
        Example("yes-alone", "yes", "( Thanks )"),
    ]
    index = ExampleIndex(examples)

    after_delete = index.search("Yes", 3, Turn("please cancel the sync", None, "Delete this one?"))
    without_context = index.search("Yes", 3)

    assert after_delete[0].example.id == "yes-delete"
    assert after_delete[0].context_similarity > after_delete[1].context_similarity
    assert without_context[0].example.id == "yes-alone"
    assert [result.similarity for result in after_delete] == pytest.approx([1.0, 1.0, 1.0])


def test_context_never_outweighs_a_clearly_better_utterance():
    examples = [
        Example("weather", "what is the weather tomorrow", "( Weather )"),
        Example(
            "other", "what is on tomorrow", "( Find )", Turn("what is the weather", None, "Sunny")
        ),
    ]

    results = ExampleIndex(examples).search(
        "what is the weather tomorrow", 2, Turn("what is the weather", None, "Sunny")
    )

    assert results[0].example.id == "weather"


def test_search_utterances_ignores_context():
    index = ExampleIndex(EXAMPLES)

    assert [r.example.id for r in index.search_utterances("who is my manager", 1)] == ["manager"]
