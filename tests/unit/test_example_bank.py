import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import DEFAULT_EXAMPLES_PATH
from app.domain.dialogue import Example, Turn
from app.domain.example_bank import BankError, load_bank, write_bank
from app.domain.lispress import Sexp, Str, function_names, normalize, parse

REPO_ROOT = Path(__file__).resolve().parents[2]
SMCALFLOW_DIR = REPO_ROOT.parent / "shared" / "data" / "smcalflow"
SHARED_BANK = SMCALFLOW_DIR / "bank.dataflow_dialogues.jsonl"
SHARED_DEV = SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl"

needs_shared_data = pytest.mark.skipif(
    not SHARED_BANK.is_file(),
    reason=f"SMCalFlow data not found at {SMCALFLOW_DIR}",
)

GOOD_LINE = {
    "id": "good",
    "utterance": "When is my haircut?",
    "plan": "(Yield :output (:start (FindNumNextEvent :constraint (Constraint[Event]) "
    ":number #(Number 1))))",
    "previous": None,
}

# Literal types whose values are free text or numbers. Other `#(Type "value")`
# literals are enumerations, so the default bank may only use values the data uses.
FREE_TEXT_LITERALS = {"String", "PersonName", "LocationKeyphrase", "Number"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write each item as one line: dicts as JSON, strings verbatim."""
    text = "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


_REMOVE = object()


def with_fields(**fields: Any) -> dict[str, Any]:
    record = dict(GOOD_LINE, id="second")
    for key, value in fields.items():
        if value is _REMOVE:
            record.pop(key)
        else:
            record[key] = value
    return record


def literals(sexp: Sexp) -> set[tuple[str, str]]:
    """Collect `#(Type "value")` pairs."""
    found: set[tuple[str, str]] = set()
    pending = [sexp]
    while pending:
        node = pending.pop()
        if isinstance(node, tuple):
            if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], Str):
                found.add((node[0], node[1].value))
            pending.extend(node)
    return found


def keywords(sexp: Sexp) -> set[str]:
    found: set[str] = set()
    pending = [sexp]
    while pending:
        node = pending.pop()
        if isinstance(node, tuple):
            pending.extend(node)
        elif isinstance(node, str) and node.startswith(":"):
            found.add(node)
    return found


def yield_output_head(plan: str) -> str | None:
    """Return the head of the Yield output, e.g. `:start` for `( Yield :output ( :start ... ) )`."""
    sexp = parse(plan)
    if isinstance(sexp, tuple) and len(sexp) == 3 and sexp[0] == "Yield":
        output = sexp[2]
        if isinstance(output, tuple) and output and isinstance(output[0], str):
            return output[0]
    return None


# Loading


def test_load_reads_every_field(tmp_path):
    record = dict(
        GOOD_LINE,
        previous={"utterance": "Hi", "plan": "(GenericPleasantry)", "agent_reply": "Hello!"},
    )
    path = write_lines(tmp_path / "bank.jsonl", [record])

    [example] = load_bank(path)

    assert example.id == "good"
    assert example.utterance == "When is my haircut?"
    assert example.previous == Turn(
        utterance="Hi", plan="( GenericPleasantry )", agent_reply="Hello!"
    )


def test_load_normalizes_plans(tmp_path):
    path = write_lines(tmp_path / "bank.jsonl", [GOOD_LINE])

    [example] = load_bank(path)

    assert example.plan == normalize(GOOD_LINE["plan"])
    assert example.plan.startswith("( Yield :output ( :start")


def test_load_previous_without_plan_or_reply(tmp_path):
    record = dict(GOOD_LINE, previous={"utterance": "Hi", "plan": None, "agent_reply": None})
    path = write_lines(tmp_path / "bank.jsonl", [record])

    [example] = load_bank(path)

    assert example.previous == Turn(utterance="Hi")


def test_load_ignores_blank_lines(tmp_path):
    path = write_lines(tmp_path / "bank.jsonl", ["", GOOD_LINE, "   ", with_fields(), ""])

    examples = load_bank(path)

    assert [example.id for example in examples] == ["good", "second"]


def test_load_accepts_byte_order_mark(tmp_path):
    path = tmp_path / "bank.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_LINE).encode() + b"\n")

    assert [example.id for example in load_bank(path)] == ["good"]


@pytest.mark.parametrize(
    "second_line, field, message",
    [
        ('{"id": "x", "utterance": ', None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        (with_fields(id=_REMOVE), "id", "missing"),
        (with_fields(id=""), "id", "empty"),
        (with_fields(id="good"), "id", "duplicate id 'good', first used on line 1"),
        (with_fields(utterance=_REMOVE), "utterance", "missing"),
        (with_fields(utterance=""), "utterance", "empty"),
        (with_fields(utterance="   "), "utterance", "empty"),
        (with_fields(utterance=42), "utterance", "expected a string"),
        (with_fields(plan=_REMOVE), "plan", "missing"),
        (with_fields(plan=""), "plan", "empty"),
        (with_fields(plan="(Yield :output (Foo)"), "plan", "plan does not parse"),
        (with_fields(plan='(Foo "unterminated)'), "plan", "plan does not parse"),
        (with_fields(plan="(Foo) (Bar)"), "plan", "plan does not parse"),
        (with_fields(previous="Hi"), "previous", "expected null or an object"),
        (with_fields(previous={"plan": "(Foo)"}), "previous.utterance", "missing"),
        (
            with_fields(previous={"utterance": "Hi", "plan": "((Foo"}),
            "previous.plan",
            "plan does not parse",
        ),
        (
            with_fields(previous={"utterance": "Hi", "agent_reply": 3}),
            "previous.agent_reply",
            "expected a string or null",
        ),
    ],
    ids=[
        "invalid-json",
        "not-object",
        "id-missing",
        "id-empty",
        "id-duplicate",
        "utterance-missing",
        "utterance-empty",
        "utterance-blank",
        "utterance-not-string",
        "plan-missing",
        "plan-empty",
        "plan-unclosed",
        "plan-unterminated-string",
        "plan-two-expressions",
        "previous-not-object",
        "previous-utterance-missing",
        "previous-plan-invalid",
        "previous-reply-not-string",
    ],
)
def test_load_bad_line_names_line_and_field(tmp_path, second_line, field, message):
    path = write_lines(tmp_path / "bank.jsonl", [GOOD_LINE, second_line])

    with pytest.raises(BankError) as caught:
        load_bank(path)

    assert caught.value.line == 2
    assert caught.value.field == field
    assert f"{path}:2" in str(caught.value)
    assert message in str(caught.value)


def test_load_error_message_names_field(tmp_path):
    path = write_lines(tmp_path / "bank.jsonl", [with_fields(plan="(Foo")])

    with pytest.raises(BankError, match=r"bank\.jsonl:1: field 'plan': plan does not parse"):
        load_bank(path)


def test_load_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bank.jsonl"
    path.write_bytes(json.dumps(GOOD_LINE).encode() + b"\n" + b'{"id": "\xff"}\n')

    with pytest.raises(BankError, match="not valid UTF-8") as caught:
        load_bank(path)

    assert caught.value.line == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_load_empty_bank_rejected(tmp_path, content):
    path = tmp_path / "bank.jsonl"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(BankError, match="contains no examples"):
        load_bank(path)


def test_load_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.jsonl"

    with pytest.raises(BankError, match="absent.jsonl: cannot read the file"):
        load_bank(path)


def test_load_large_bank_under_one_second(tmp_path):
    plan_template = (
        "( Yield :output ( CreateCommitEventWrapper :event ( CreatePreflightEventWrapper "
        ":constraint ( Constraint[Event] :start ( ?= ( DateAtTimeWithDefaults :date ( Tomorrow ) "
        ':time ( NumberPM :number # ( Number {n} ) ) ) ) :subject ( ?= # ( String " task {n} " ) ) '
        ") ) ) )"
    )
    examples = [
        Example(
            id=f"dialogue-{n // 4}/{n % 4}",
            utterance=f"Add task {n} tomorrow at {n % 12 + 1}pm",
            plan=plan_template.format(n=n),
            previous=Turn(
                utterance=f"Add task {n - 1}",
                plan=plan_template.format(n=n - 1),
                agent_reply="Is this good?",
            ),
        )
        for n in range(10_000)
    ]
    path = tmp_path / "large.jsonl"
    write_bank(path, examples)

    started = time.perf_counter()
    loaded = load_bank(path)
    elapsed = time.perf_counter() - started

    assert len(loaded) == 10_000
    assert elapsed < 1.0


# Writing


def sample_examples() -> list[Example]:
    return [
        Example(id="a", utterance="Hi there", plan="( GenericPleasantry )"),
        Example(
            id="b",
            utterance='Book "Café Zoë" for lunch, 東京 time',
            plan=normalize('(Yield :output (Foo :name #(String "say \\"hi\\" (now)")))'),
            previous=Turn(utterance="Hello", plan=None, agent_reply=None),
        ),
        Example(
            id="c",
            utterance="Make it 3 instead",
            plan="( DoNotConfirm )",
            previous=Turn(utterance="Add lunch", plan="( Foo )", agent_reply="It's 61 °F."),
        ),
    ]


def test_write_then_load_round_trip(tmp_path):
    path = tmp_path / "bank.jsonl"

    written = write_bank(path, sample_examples())

    assert written == 3
    assert load_bank(path) == sample_examples()


def test_write_one_object_per_line(tmp_path):
    path = tmp_path / "bank.jsonl"

    write_bank(path, sample_examples())

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert set(json.loads(lines[0])) == {"id", "utterance", "plan", "previous"}


def test_write_keeps_unicode_readable(tmp_path):
    path = tmp_path / "bank.jsonl"

    write_bank(path, sample_examples())

    assert "Café Zoë" in path.read_text(encoding="utf-8")


def test_write_replaces_file_without_leftovers(tmp_path):
    path = tmp_path / "bank.jsonl"
    path.write_text("old content\n", encoding="utf-8")

    write_bank(path, sample_examples()[:1])

    assert [example.id for example in load_bank(path)] == ["a"]
    assert sorted(child.name for child in tmp_path.iterdir()) == ["bank.jsonl"]


def test_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "bank.jsonl"
    path.write_text("old content\n", encoding="utf-8")

    def broken_examples():
        yield sample_examples()[0]
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_bank(path, broken_examples())

    assert path.read_text(encoding="utf-8") == "old content\n"
    assert sorted(child.name for child in tmp_path.iterdir()) == ["bank.jsonl"]


def test_write_empty_bank_rejected(tmp_path):
    path = tmp_path / "bank.jsonl"

    with pytest.raises(ValueError, match="no examples"):
        write_bank(path, [])

    assert not path.exists()


# The default bank shipped with the service


@pytest.fixture(scope="module")
def default_bank() -> list[Example]:
    return load_bank(DEFAULT_EXAMPLES_PATH)


def test_default_bank_loads(default_bank):
    assert 40 <= len(default_bank) <= 80


def test_default_bank_plans_already_normalized():
    for line in DEFAULT_EXAMPLES_PATH.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert record["plan"] == normalize(record["plan"]), record["id"]


def test_default_bank_utterances_unique(default_bank):
    utterances = [example.utterance.lower() for example in default_bank]

    assert len(set(utterances)) == len(utterances)


def _names(example: Example) -> set[str]:
    return function_names(parse(example.plan))


def _has(*names: str) -> Callable[[Example], bool]:
    return lambda example: set(names) <= _names(example)


def _output_head(head: str) -> Callable[[Example], bool]:
    return lambda example: yield_output_head(example.plan) == head


def _update_with(keyword: str) -> Callable[[Example], bool]:
    def check(example: Example) -> bool:
        return "UpdateCommitEventWrapper" in _names(example) and keyword in example.plan

    return check


CATEGORIES: dict[str, Callable[[Example], bool]] = {
    "create event": _has("CreateCommitEventWrapper", "CreatePreflightEventWrapper"),
    "create with time": _has("CreateCommitEventWrapper", "DateAtTimeWithDefaults"),
    "create with attendees": _has("CreateCommitEventWrapper", "AttendeeListHasRecipient"),
    "create with location": lambda example: (
        "CreateCommitEventWrapper" in _names(example) and ":location" in example.plan
    ),
    "create with duration": lambda example: (
        "CreateCommitEventWrapper" in _names(example) and ":duration" in example.plan
    ),
    "find events": _has("FindEventWrapperWithDefaults"),
    "find when": _output_head(":start"),
    "find where": _output_head(":location"),
    "find who attends": _output_head(":attendees"),
    "move event": _update_with(":start"),
    "rename event": _update_with(":subject"),
    "add attendee": _has("UpdateCommitEventWrapper", "AttendeeListHasRecipient"),
    "delete event": _has("DeleteCommitEventWrapper", "DeletePreflightEventWrapper"),
    "manager": _has("FindManager"),
    "reports": _has("FindReports"),
    "team": _has("FindTeamOf"),
    "weather": _has("WeatherQueryApi"),
    "greeting": _has("GenericPleasantry"),
    "thanks": _has("PleasantryAnythingElseCombined"),
    "out of scope": _has("FenceScope"),
}


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_default_bank_covers_category(default_bank, category):
    matches = [example.id for example in default_bank if CATEGORIES[category](example)]

    assert matches, f"no default example for {category!r}"


def test_default_bank_has_several_fences(default_bank):
    fences = {name for example in default_bank for name in _names(example)}
    fences = {name for name in fences if name.startswith("Fence")}

    assert len(fences) >= 6, sorted(fences)


def test_default_bank_context_examples(default_bank):
    with_previous = [example for example in default_bank if example.previous is not None]
    refers = [example for example in with_previous if "refer" in _names(example)]
    revises = [example for example in with_previous if "ReviseConstraint" in _names(example)]

    assert len(with_previous) >= 8
    assert len(refers) >= 3
    assert len(revises) >= 2


def test_default_bank_previous_turns_complete(default_bank):
    for example in default_bank:
        if example.previous is not None:
            assert example.previous.plan, example.id
            assert example.previous.agent_reply, example.id


@pytest.fixture(scope="module")
def shared_vocabulary() -> dict[str, set]:
    """Function names, keywords and enumeration literals of the shared bank's v1 plans."""
    names: set[str] = set()
    keyword_set: set[str] = set()
    enum_literals: set[tuple[str, str]] = set()
    with SHARED_BANK.open(encoding="utf-8") as file:
        for line in file:
            for turn in json.loads(line)["turns"]:
                sexp = parse(turn["tags"]["original_lispress"])
                names |= function_names(sexp)
                keyword_set |= keywords(sexp)
                enum_literals |= literals(sexp)
    return {"names": names, "keywords": keyword_set, "literals": enum_literals}


def _default_plans(default_bank: list[Example]) -> list[tuple[str, str]]:
    plans = [(example.id, example.plan) for example in default_bank]
    plans += [
        (f"{example.id} (previous)", example.previous.plan)
        for example in default_bank
        if example.previous is not None and example.previous.plan is not None
    ]
    return plans


@needs_shared_data
def test_default_bank_function_names_in_data(default_bank, shared_vocabulary):
    for example_id, plan in _default_plans(default_bank):
        unknown = function_names(parse(plan)) - shared_vocabulary["names"]
        assert not unknown, f"{example_id}: {sorted(unknown)}"


@needs_shared_data
def test_default_bank_keywords_in_data(default_bank, shared_vocabulary):
    for example_id, plan in _default_plans(default_bank):
        unknown = keywords(parse(plan)) - shared_vocabulary["keywords"]
        assert not unknown, f"{example_id}: {sorted(unknown)}"


@needs_shared_data
def test_default_bank_enum_values_in_data(default_bank, shared_vocabulary):
    for example_id, plan in _default_plans(default_bank):
        used = {pair for pair in literals(parse(plan)) if pair[0] not in FREE_TEXT_LITERALS}
        unknown = used - shared_vocabulary["literals"]
        assert not unknown, f"{example_id}: {sorted(unknown)}"


@needs_shared_data
def test_default_bank_utterances_original():
    data_utterances: set[str] = set()
    for source in (SHARED_BANK, SHARED_DEV):
        with source.open(encoding="utf-8") as file:
            for line in file:
                for turn in json.loads(line)["turns"]:
                    data_utterances.add(turn["user_utterance"]["original_text"].strip().lower())

    for example in load_bank(DEFAULT_EXAMPLES_PATH):
        assert example.utterance.strip().lower() not in data_utterances, example.id
