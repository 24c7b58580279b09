"""`plan-eval` end to end: hand-made dialogues through the real Ollama client, and dev dialogues
through the embedded model."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli import evaluate, import_bank
from tests.conftest import SMCALFLOW_DIR
from tests.support.fake_ollama import FakeOllama, ScriptedReply

MODEL = "plan-model"
BOSS = "(Yield :output (FindManager :recipient (toRecipient (CurrentUser))))"
HER_MANAGER = (
    "(Yield :output (FindManager :recipient (Execute :intension "
    "(refer (extensionConstraint (Constraint[Recipient]))))))"
)
TEAM = "(Yield :output (FindTeamOf :recipient (toRecipient (CurrentUser))))"
REPORTS = "(Yield :output (FindReports :recipient (toRecipient (CurrentUser))))"
DENVER_WEATHER = (
    "(Yield :output (WeatherQueryApi :place (AtPlace :place (FindPlace :keyphrase "
    '#(LocationKeyphrase "Denver"))) :time (Constraint[DateTime] :date (?= (Today)))))'
)
WINDY = (
    "(Yield :output (IsWindy :table (Execute :intension "
    "(refer (extensionConstraint (AlwaysTrueConstraint[WeatherTable]))))))"
)


def spaced(plan: str) -> str:
    """Write a plan with a space around every bracket, as the small model does."""
    return " ".join(plan.replace("(", " ( ").replace(")", " ) ").split())


# (utterance, gold plan, skip, small model's reply, probability of each reply token).
# Floor: the first, second, third and fifth utterances are in the default bank with
# their gold plans; the fourth's nearest bank plan is a different weather query.
DIALOGUES: dict[str, list[tuple[str, str, bool, str, float]]] = {
    "dialogue-a": [
        ("Who's my boss?", BOSS, False, spaced(BOSS), 0.9),
        ("And who is her manager?", HER_MANAGER, False, spaced(HER_MANAGER), 0.8),
    ],
    "dialogue-b": [
        ("Good morning!", "(GenericPleasantry)", True, "( GenericPleasantry )", 0.9),
        ("Who works on my team?", TEAM, False, spaced(REPORTS), 0.3),
    ],
    "dialogue-c": [
        ("What is the weather like in Denver today?", DENVER_WEATHER, False, spaced(BOSS), 0.85),
        ("Is it going to be windy?", WINDY, False, "not a plan at all", 0.95),
    ],
}
REPLIES = {
    utterance: (reply, probability)
    for turns in DIALOGUES.values()
    for utterance, _, _, reply, probability in turns
}


def write_dialogues(path: Path, dialogue_ids: list[str]) -> Path:
    lines = []
    for dialogue_id in dialogue_ids:
        turns = [
            {
                "turn_index": index,
                "user_utterance": {"original_text": utterance},
                "agent_utterance": {"original_text": f"reply {index}"},
                "lispress": gold,
                "tags": {"original_lispress": gold},
                "skip": skip,
            }
            for index, (utterance, gold, skip, _, _) in enumerate(DIALOGUES[dialogue_id])
        ]
        lines.append(json.dumps({"dialogue_id": dialogue_id, "turns": turns}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def scripted_reply(request: dict[str, Any]) -> ScriptedReply:
    utterance = request["messages"][-1]["content"].rsplit("Request: ", 1)[-1]
    reply, probability = REPLIES[utterance]
    return ScriptedReply(content=reply, default_logprob=math.log(probability))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo the CLI's logging set-up, whose handler writes to this test's captured stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL], responder=scripted_reply) as server:
        monkeypatch.chdir(tmp_path)  # no .env here: the settings come from the environment
        monkeypatch.setenv("SMALL_MODEL_BACKEND", "ollama")
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        monkeypatch.setenv("LOCAL_MODEL_NAME", MODEL)
        monkeypatch.setenv("OLLAMA_TIMEOUT_S", "10")
        monkeypatch.setenv("LARGE_MODEL_BACKEND", "none")
        monkeypatch.setenv("DELEGATION_MAX_RATIO", "0.5")
        # These utterances are in the default bank: ask the model all the same, and let no
        # example's plan stand in, so that every first answer is the scripted reply.
        monkeypatch.setenv("BANK_ANSWER_SIMILARITY", "2")
        monkeypatch.setenv("CANDIDATE_COUNT", "0")
        monkeypatch.delenv("EXAMPLES_PATH", raising=False)
        yield server


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    return write_dialogues(tmp_path / "dev.dataflow_dialogues.jsonl", list(DIALOGUES))


def run_cli(*args: str) -> int:
    return evaluate.main([*args, "--no-progress"])


@pytest.fixture
def report(ollama, data_path: Path, tmp_path: Path) -> dict[str, Any]:
    assert run_cli("--data", str(data_path), "--out", str(tmp_path / "out")) == 0
    return json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))


def test_report_turns_and_failures(report):
    assert report["turns"] == 5
    assert report["failed_turns"] == 1


def test_report_exact_match(report):
    assert report["exact_match"]["small"] == pytest.approx(0.4)
    assert report["exact_match"]["final"] == pytest.approx(0.4)
    assert report["exact_match"]["large"] is None


def test_report_floor_exact_match(report):
    assert report["floor_exact_match"] == pytest.approx(0.8)


def test_report_confidence_auroc(report):
    # Correct: 0.9 and 0.8. Wrong: 0.3, 0.85 and the invalid plan, whose tokens score
    # 0.95 but whose confidence the planner sets to 0.
    assert report["confidence_auroc"]["logprobs"] == pytest.approx(3 / 6)
    assert report["confidence_auroc"]["confidence"] == pytest.approx(5 / 6)
    assert 0.0 <= report["confidence_auroc"]["retrieval"] <= 1.0


def test_report_delegation(report):
    # Delegated: the 0.3 turn (below the warm-up threshold 0.5) and the invalid plan.
    assert report["delegation_rate"] == pytest.approx(0.4)
    assert report["delegation_precision"] == pytest.approx(1.0)
    assert report["errors_caught"] == pytest.approx(2 / 3)


def test_report_invalid_plans(report):
    assert report["invalid_plans"] == pytest.approx(0.2)


def test_report_by_dependency(report):
    assert report["exact_match_by_dependency"]["dependent"] == pytest.approx(0.5)
    assert report["exact_match_by_dependency"]["independent"] == pytest.approx(1 / 3)


def test_report_latency_and_cost(report):
    assert report["latency_ms"]["small_model"]["count"] == 4
    assert report["latency_ms"]["total"]["p95"] >= report["latency_ms"]["total"]["p50"]
    assert report["latency_ms"]["large_model"]["p50"] is None
    # Nothing ran on a large model: the two delegated turns are priced as projections.
    assert report["cost_per_1000_requests_usd"]["large"] > 0
    assert report["cost_per_1000_requests_usd"]["large_token_counts"].startswith("projected")


def test_report_run_metadata(report, data_path):
    assert report["run"]["data"] == str(data_path)
    assert report["run"]["bank"].endswith("examples.jsonl")
    assert report["run"]["small_backend"] == "ollama"
    assert report["run"]["small_model"] == MODEL
    assert report["run"]["large_backend"] is None
    assert report["run"]["prompt_version"]


def test_report_files_written(report, tmp_path):
    out = tmp_path / "out"
    turns = (out / "turns.jsonl").read_text(encoding="utf-8").splitlines()

    assert len(turns) == 5
    assert "exact match, final | 0.400" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "tradeoff.png").read_bytes().startswith(b"\x89PNG")


def test_failed_turn_recorded(report, tmp_path):
    turns = [json.loads(line) for line in (tmp_path / "out" / "turns.jsonl").open()]
    failed = turns[-1]

    assert failed["utterance"] == "Is it going to be windy?"
    assert "no usable plan" in failed["error"]
    assert failed["final_correct"] is False
    assert failed["signals"]["confidence"] == 0.0


def test_context_has_previous_turns(report, ollama):
    last_prompt = ollama.requests_to("/api/chat")[-1].body["messages"][-1]["content"]

    assert "Previous request: What is the weather like in Denver today?" in last_prompt
    assert "Assistant replied: reply 0" in last_prompt


GOLD = {utterance: gold for turns in DIALOGUES.values() for utterance, gold, _, _, _ in turns}


def context_sensitive_reply(request: dict[str, Any]) -> ScriptedReply:
    """Reply with the gold plan only when the prompt gives earlier turns.

    "Who's my boss?" needs no context and is always right. Without context,
    "Is it going to be windy?" gets no plan at all, so that turn fails.
    """
    prompt = request["messages"][-1]["content"]
    utterance = prompt.rsplit("Request: ", 1)[-1]
    if "Previous request:" in prompt or utterance == "Who's my boss?":
        return ScriptedReply(content=spaced(GOLD[utterance]), default_logprob=math.log(0.9))
    if utterance == "Is it going to be windy?":
        return ScriptedReply(content="not a plan at all", default_logprob=math.log(0.9))
    return ScriptedReply(content=spaced(REPORTS), default_logprob=math.log(0.4))


def read_turns(out: Path) -> list[dict[str, Any]]:
    lines = (out / "turns.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def ablation_out(ollama, data_path: Path, tmp_path: Path) -> Path:
    ollama.set_responder(context_sensitive_reply)
    out = tmp_path / "ablation"
    assert run_cli("--data", str(data_path), "--out", str(out), "--context-ablation") == 0
    return out


def test_ablation_exact_match(ablation_out):
    report = json.loads((ablation_out / "report.json").read_text(encoding="utf-8"))

    # With context: every turn but "What is the weather like in Denver today?", the
    # first of its dialogue. Without context: only "Who's my boss?".
    assert report["exact_match"]["final"] == pytest.approx(0.8)
    assert report["exact_match_by_dependency"]["dependent"] == pytest.approx(1.0)
    assert report["exact_match_by_dependency"]["independent"] == pytest.approx(2 / 3)
    assert report["exact_match_without_context"]["final"] == pytest.approx(0.2)
    assert report["exact_match_without_context"]["dependent"] == pytest.approx(0.0)
    assert report["exact_match_without_context"]["independent"] == pytest.approx(1 / 3)


def test_ablation_doubles_model_calls(ablation_out, ollama):
    prompts = [
        request.body["messages"][-1]["content"] for request in ollama.requests_to("/api/chat")
    ]

    assert len(prompts) == 10
    assert sum("Previous request:" in prompt for prompt in prompts) == 3


def test_ablation_turn_records(ablation_out):
    turns = {turn["utterance"]: turn for turn in read_turns(ablation_out)}
    boss, windy = turns["Who's my boss?"], turns["Is it going to be windy?"]

    assert boss["final_correct_without_context"] is True
    assert windy["final_plan_without_context"] is None
    assert windy["final_correct_without_context"] is False
    assert windy["final_correct"] is True
    assert windy["error"] is None


def test_ablation_report_markdown(ablation_out):
    markdown = (ablation_out / "report.md").read_text(encoding="utf-8")

    assert "| exact match without context, final | 0.200 |" in markdown
    assert "| exact match without context, dependent turns (2) | 0.000 |" in markdown
    assert "- **without context**:" in markdown


def test_ablation_leaves_main_run_alone(ollama, data_path, tmp_path, monkeypatch):
    # After one sample the policy uses the percentile, so a policy that also saw the
    # ablation's low confidences would decide differently.
    monkeypatch.setenv("DELEGATION_MIN_SAMPLES", "1")
    ollama.set_responder(context_sensitive_reply)
    runs = {}
    for name, flags in (("plain", []), ("ablation", ["--context-ablation"])):
        out = tmp_path / name
        assert run_cli("--data", str(data_path), "--out", str(out), *flags) == 0
        runs[name] = (json.loads((out / "report.json").read_text()), read_turns(out))
    plain_report, plain_turns = runs["plain"]
    ablation_report, ablation_turns = runs["ablation"]

    assert [turn["decision"] for turn in ablation_turns] == [
        turn["decision"] for turn in plain_turns
    ]
    assert [turn["final_plan"] for turn in ablation_turns] == [
        turn["final_plan"] for turn in plain_turns
    ]
    assert [turn["tokens"] for turn in ablation_turns] == [turn["tokens"] for turn in plain_turns]
    assert ablation_report["exact_match"] == plain_report["exact_match"]
    assert ablation_report["delegation_rate"] == plain_report["delegation_rate"]
    assert (
        ablation_report["cost_per_1000_requests_usd"] == plain_report["cost_per_1000_requests_usd"]
    )


def test_no_ablation_by_default(report, tmp_path):
    out = tmp_path / "out"
    turns = read_turns(out)

    assert report["exact_match_without_context"] is None
    assert not any("final_plan_without_context" in turn for turn in turns)
    assert not any("final_correct_without_context" in turn for turn in turns)
    assert "without context" not in (out / "report.md").read_text(encoding="utf-8")


def test_rejects_data_as_bank(ollama, data_path, tmp_path, capsys):
    status = run_cli("--data", str(data_path), "--bank", str(data_path), "--out", str(tmp_path))

    assert status == 1
    assert "is the evaluation data file" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def test_rejects_data_as_examples_path(ollama, data_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXAMPLES_PATH", str(data_path))

    status = run_cli("--data", str(data_path), "--out", str(tmp_path / "out"))

    assert status == 1
    assert "is the evaluation data file" in capsys.readouterr().err


def test_warns_bank_sharing_dialogues(ollama, data_path, tmp_path, capsys):
    bank_path = tmp_path / "bank-from-data.jsonl"
    assert import_bank.main(["--out", str(bank_path), str(data_path)]) == 0
    out = tmp_path / "out"

    status = run_cli("--data", str(data_path), "--bank", str(bank_path), "--out", str(out))

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert status == 0
    assert report["run"]["bank_dialogues_shared_with_data"] == 3
    assert "bank and data share dialogues shared=3" in capsys.readouterr().err


def test_missing_data_file(ollama, tmp_path, capsys):
    status = run_cli("--data", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "out"))

    assert status == 1
    assert "data file not found" in capsys.readouterr().err


def sampled_dialogues(out: Path) -> list[str]:
    lines = (out / "turns.jsonl").read_text(encoding="utf-8").splitlines()
    return sorted({json.loads(line)["dialogue_id"] for line in lines})


def test_limit_seed_reproducible(ollama, data_path, tmp_path):
    for name in ("first", "second"):
        arguments = ["--data", str(data_path), "--out", str(tmp_path / name)]
        assert run_cli(*arguments, "--limit", "2", "--seed", "5") == 0

    first = sampled_dialogues(tmp_path / "first")
    assert len(first) == 2
    assert sampled_dialogues(tmp_path / "second") == first


def test_limit_seeds_differ(ollama, data_path, tmp_path):
    samples = set()
    for seed in range(6):
        out = tmp_path / f"seed-{seed}"
        arguments = ["--data", str(data_path), "--out", str(out), "--limit", "1"]
        assert run_cli(*arguments, "--seed", str(seed)) == 0
        samples.add(tuple(sampled_dialogues(out)))

    assert len(samples) > 1


# A sample of two dev dialogues of one turn each, so the embedded model answers twice.
DEV_SEED = "33"


@pytest.mark.skipif(
    not (SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl").is_file(),
    reason="the shared SMCalFlow files are not present",
)
def test_embedded_model_on_dev_dialogues(tmp_path, monkeypatch):
    bank_path = tmp_path / "bank.jsonl"
    source = SMCALFLOW_DIR / "bank.dataflow_dialogues.jsonl"
    assert import_bank.main(["--out", str(bank_path), str(source)]) == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMALL_MODEL_BACKEND", "llama-cpp")
    monkeypatch.setenv("LARGE_MODEL_BACKEND", "none")
    monkeypatch.setenv("FEW_SHOT_K", "4")
    monkeypatch.setenv("EMBEDDED_TIMEOUT_S", "120")
    # Ask the model on every turn, so that it scores the examples' plans against its own.
    monkeypatch.setenv("BANK_ANSWER_SIMILARITY", "2")

    data = SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl"
    arguments = ["--data", str(data), "--bank", str(bank_path), "--out", str(tmp_path / "out")]
    status = run_cli(*arguments, "--limit", "2", "--seed", DEV_SEED)

    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert status == 0
    assert report["turns"] == 2
    assert report["failed_turns"] == 0
    assert report["run"]["small_backend"] == "llama-cpp"
    assert report["run"]["bank_dialogues_shared_with_data"] == 0
    assert 0.0 <= report["exact_match"]["final"] <= 1.0
    assert report["latency_ms"]["small_model"]["count"] == 2
    assert set(report["origins"]) <= {"generated", "ranked_example"}
    turns = [json.loads(line) for line in (tmp_path / "out" / "turns.jsonl").open()]
    assert all(turn["signals"]["logprobs"] is not None for turn in turns)
