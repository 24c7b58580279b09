import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.cli.import_bank import MAX_REPORTS_PER_FILE, main
from app.domain.dialogue import Turn
from app.domain.example_bank import load_bank
from app.domain.lispress import normalize, parse

REPO_ROOT = Path(__file__).resolve().parents[2]
SMCALFLOW_DIR = REPO_ROOT.parent / "shared" / "data" / "smcalflow"
SHARED_DEV = SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl"

needs_dev_data = pytest.mark.skipif(
    not SHARED_DEV.is_file(),
    reason=f"SMCalFlow dev file not found at {SHARED_DEV}",
)


def make_turn(
    index: int,
    utterance: str,
    v1: str,
    v2: str | None = None,
    reply: str = "Done.",
    skip: bool = False,
) -> dict[str, Any]:
    return {
        "turn_index": index,
        "user_utterance": {"original_text": utterance, "tokens": utterance.split()},
        "agent_utterance": {"original_text": reply, "tokens": reply.split()},
        "lispress": v2 if v2 is not None else v1,
        "tags": {"original_lispress": v1},
        "skip": skip,
    }


def make_dialogue(dialogue_id: str, *turns: dict[str, Any]) -> dict[str, Any]:
    return {"dialogue_id": dialogue_id, "turns": list(turns)}


def write_source(path: Path, lines: list[Any]) -> Path:
    """Write dialogues as JSON lines, and each string verbatim as a malformed line."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


LUNCH = make_dialogue(
    "lunch",
    make_turn(
        0,
        "Add lunch tomorrow",
        '(Yield :output (CreateCommitEventWrapper :event (Foo :subject #(String "lunch"))))',
        v2='(Yield (CreateCommitEventWrapper (Foo "lunch")))',
        reply="Is this good?",
    ),
    make_turn(
        1,
        "uh, hmm",
        "(UserPauseResponse)",
        v2="(UserPauseResponse)",
        reply="Take your time.",
        skip=True,
    ),
    make_turn(
        2,
        "Yes, book it",
        "(Yield :output (Execute :intension (ConfirmAndReturnAction)))",
        v2="(Yield (Execute (ConfirmAndReturnAction)))",
        reply="I've put that on your calendar.",
    ),
)

GREETING = make_dialogue("greeting", make_turn(0, "Hello there", "(GenericPleasantry)"))


def run_import(tmp_path: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "bank.jsonl"
    return main(["--out", str(out), *args]), out


def test_import_leaves_out_skipped_turns(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])

    status, out = run_import(tmp_path, str(source))

    assert status == 0
    assert [example.id for example in load_bank(out)] == ["lunch/0", "lunch/2"]


def test_import_first_turn_has_no_previous(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])

    _, out = run_import(tmp_path, str(source))

    first = load_bank(out)[0]
    assert first.utterance == "Add lunch tomorrow"
    assert first.previous is None


def test_import_previous_is_skipped_turn(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])

    _, out = run_import(tmp_path, str(source))

    last = load_bank(out)[1]
    assert last.previous == Turn(
        utterance="uh, hmm", plan="( UserPauseResponse )", agent_reply="Take your time."
    )


def test_import_default_format_is_v1(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])

    _, out = run_import(tmp_path, str(source))

    first = load_bank(out)[0]
    assert first.plan == (
        "( Yield :output ( CreateCommitEventWrapper :event "
        '( Foo :subject # ( String " lunch " ) ) ) )'
    )


def test_import_v2_reads_lispress(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])

    status, out = run_import(tmp_path, "--format", "v2", str(source))

    examples = load_bank(out)
    assert status == 0
    assert examples[0].plan == '( Yield ( CreateCommitEventWrapper ( Foo " lunch " ) ) )'
    assert examples[1].plan == "( Yield ( Execute ( ConfirmAndReturnAction ) ) )"
    assert examples[1].previous.plan == "( UserPauseResponse )"


def test_import_v2_ignores_bad_v1_plan(tmp_path):
    dialogue = make_dialogue("d", make_turn(0, "Hi", v1="(Broken", v2="(GenericPleasantry)"))
    source = write_source(tmp_path / "a.jsonl", [dialogue])

    status, out = run_import(tmp_path, "--format", "v2", str(source))

    assert status == 0
    assert load_bank(out)[0].plan == "( GenericPleasantry )"


def test_import_reads_several_sources(tmp_path):
    first = write_source(tmp_path / "a.jsonl", [LUNCH])
    second = write_source(tmp_path / "b.jsonl", [GREETING])

    _, out = run_import(tmp_path, str(first), str(second))

    assert [example.id for example in load_bank(out)] == ["lunch/0", "lunch/2", "greeting/0"]


def test_import_prints_summary(tmp_path, capsys):
    source = write_source(tmp_path / "a.jsonl", [LUNCH, GREETING])

    run_import(tmp_path, str(source))

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert "dialogues=2 imported=3 skipped=1 malformed=0" in lines[0]


def test_import_malformed_lines_reported(tmp_path, capsys):
    missing_utterance = make_turn(0, "x", "(GenericPleasantry)")
    del missing_utterance["user_utterance"]
    lines = [
        LUNCH,
        '{"dialogue_id": "cut", "turns": [',
        make_dialogue("no-utterance", missing_utterance),
        make_dialogue("bad-plan", make_turn(0, "Hi", "(Yield :output (Foo)")),
        {"turns": []},
        GREETING,
    ]
    source = write_source(tmp_path / "a.jsonl", lines)

    status, out = run_import(tmp_path, str(source))

    captured = capsys.readouterr()
    assert status == 0
    assert f"{source}:2: malformed line left out: invalid JSON" in captured.err
    assert f"{source}:3: malformed line left out: dialogue no-utterance turn 0" in captured.err
    assert "user_utterance.original_text" in captured.err
    assert f"{source}:4: malformed line left out: dialogue bad-plan turn 0" in captured.err
    assert "plan does not parse" in captured.err
    assert f"{source}:5: malformed line left out: missing or empty field 'dialogue_id'" in (
        captured.err
    )
    assert "malformed=4" in captured.out
    assert [example.id for example in load_bank(out)] == ["lunch/0", "lunch/2", "greeting/0"]


def test_import_bad_turn_drops_whole_dialogue(tmp_path):
    dialogue = make_dialogue(
        "d",
        make_turn(0, "Hi", "(GenericPleasantry)"),
        make_turn(1, "Thanks", "(Broken"),
    )
    source = write_source(tmp_path / "a.jsonl", [dialogue, GREETING])

    _, out = run_import(tmp_path, str(source))

    assert [example.id for example in load_bank(out)] == ["greeting/0"]


def test_import_duplicate_dialogue_reported(tmp_path, capsys):
    source = write_source(tmp_path / "a.jsonl", [GREETING])

    status, out = run_import(tmp_path, str(source), str(source))

    assert status == 0
    assert f"{source}:1: malformed line left out: duplicate dialogue_id 'greeting'" in (
        capsys.readouterr().err
    )
    assert len(load_bank(out)) == 1


def test_import_duplicate_turn_index_reported(tmp_path, capsys):
    dialogue = make_dialogue(
        "d", make_turn(0, "Hi", "(GenericPleasantry)"), make_turn(0, "Hey", "(GenericPleasantry)")
    )
    source = write_source(tmp_path / "a.jsonl", [dialogue, GREETING])

    run_import(tmp_path, str(source))

    assert "duplicate turn_index" in capsys.readouterr().err


def test_import_limits_reports_per_file(tmp_path, capsys):
    lines = ["not json"] * (MAX_REPORTS_PER_FILE + 5) + [GREETING]
    source = write_source(tmp_path / "a.jsonl", lines)

    status, _ = run_import(tmp_path, str(source))

    err_lines = capsys.readouterr().err.splitlines()
    assert status == 0
    assert len(err_lines) == MAX_REPORTS_PER_FILE + 1
    assert err_lines[-1] == f"{source}: 5 more malformed lines not shown"


def test_import_missing_source_exit_1(tmp_path, capsys):
    present = write_source(tmp_path / "a.jsonl", [GREETING])
    absent = tmp_path / "absent.jsonl"

    status, out = run_import(tmp_path, str(present), str(absent))

    assert status == 1
    assert f"source file {absent} not found" in capsys.readouterr().err
    assert not out.exists()


def test_import_nothing_imported_exit_1(tmp_path, capsys):
    only_skipped = make_dialogue("d", make_turn(0, "hmm", "(UserPauseResponse)", skip=True))
    source = write_source(tmp_path / "a.jsonl", [only_skipped, "garbage"])
    out = tmp_path / "bank.jsonl"
    out.write_text("previous bank\n", encoding="utf-8")

    status = main(["--out", str(out), str(source)])

    assert status == 1
    assert "no examples imported" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "previous bank\n"


def test_import_creates_out_folder(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [GREETING])
    out = tmp_path / "new-folder" / "bank.jsonl"

    status = main(["--out", str(out), str(source)])

    assert status == 0
    assert len(load_bank(out)) == 1


def test_import_unwritable_out_exit_1(tmp_path, capsys):
    source = write_source(tmp_path / "a.jsonl", [GREETING])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "bank.jsonl"

    status = main(["--out", str(out), str(source)])

    assert status == 1
    assert f"cannot write {out}" in capsys.readouterr().err


def test_import_directory_source_exit_1(tmp_path, capsys):
    status = main(["--out", str(tmp_path / "bank.jsonl"), str(tmp_path)])

    assert status == 1
    assert "is a directory" in capsys.readouterr().err


def test_import_help_describes_options(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    help_text = capsys.readouterr().out
    assert caught.value.code == 0
    assert "bank file to write" in help_text
    assert "tags.original_lispress" in help_text
    assert "SMCalFlow dialogue file" in help_text


def test_import_rejects_unknown_format(tmp_path, capsys):
    source = write_source(tmp_path / "a.jsonl", [GREETING])

    with pytest.raises(SystemExit) as caught:
        main(["--out", str(tmp_path / "bank.jsonl"), "--format", "v3", str(source)])

    assert caught.value.code == 2
    assert "invalid choice: 'v3'" in capsys.readouterr().err


def test_import_runs_as_module(tmp_path):
    source = write_source(tmp_path / "a.jsonl", [LUNCH])
    out = tmp_path / "bank.jsonl"

    completed = subprocess.run(
        [sys.executable, "-m", "app.cli.import_bank", "--out", str(out), str(source)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    assert "imported=2" in completed.stdout
    assert len(load_bank(out)) == 2


# The real SMCalFlow dev file


def non_skipped_turns(path: Path, plan_format: str) -> dict[str, str]:
    """Map "<dialogue_id>/<turn_index>" to the raw plan of every non-skipped turn."""
    plans: dict[str, str] = {}
    with path.open(encoding="utf-8") as file:
        for line in file:
            dialogue = json.loads(line)
            for turn in dialogue["turns"]:
                if not turn["skip"]:
                    plan = (
                        turn["lispress"]
                        if plan_format == "v2"
                        else turn["tags"]["original_lispress"]
                    )
                    plans[f"{dialogue['dialogue_id']}/{turn['turn_index']}"] = plan
    return plans


@pytest.fixture(scope="module")
def dev_bank_v1(tmp_path_factory):
    out = tmp_path_factory.mktemp("dev") / "dev_v1.jsonl"
    status = main(["--out", str(out), str(SHARED_DEV)])
    assert status == 0
    return load_bank(out)


@needs_dev_data
def test_dev_import_count_matches_data(dev_bank_v1):
    expected = non_skipped_turns(SHARED_DEV, "v1")

    assert len(dev_bank_v1) == len(expected)
    assert {example.id for example in dev_bank_v1} == set(expected)


@needs_dev_data
def test_dev_import_plans_match_data(dev_bank_v1):
    expected = non_skipped_turns(SHARED_DEV, "v1")

    for example in dev_bank_v1:
        parse(example.plan)
        assert example.plan == normalize(expected[example.id]), example.id


@needs_dev_data
def test_dev_import_keeps_previous_turn(dev_bank_v1):
    # The first dialogue of the dev file whose second turn is not skipped, read at test time.
    with SHARED_DEV.open(encoding="utf-8") as file:
        dialogue = next(
            record
            for record in map(json.loads, file)
            if len(record["turns"]) > 1 and not record["turns"][1]["skip"]
        )
    first, second = dialogue["turns"][0], dialogue["turns"][1]
    by_id = {example.id: example for example in dev_bank_v1}

    example = by_id[f"{dialogue['dialogue_id']}/{second['turn_index']}"]

    assert example.utterance == second["user_utterance"]["original_text"]
    assert example.plan == normalize(second["tags"]["original_lispress"])
    assert example.previous == Turn(
        utterance=first["user_utterance"]["original_text"],
        plan=normalize(first["tags"]["original_lispress"]),
        agent_reply=first["agent_utterance"]["original_text"],
    )


@needs_dev_data
def test_dev_import_v2_plans(tmp_path):
    out = tmp_path / "dev_v2.jsonl"

    status = main(["--out", str(out), "--format", "v2", str(SHARED_DEV)])

    expected = non_skipped_turns(SHARED_DEV, "v2")
    examples = load_bank(out)
    assert status == 0
    assert len(examples) == len(expected)
    assert all(example.plan == normalize(expected[example.id]) for example in examples)
