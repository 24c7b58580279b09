"""`plan-calibrate` end to end with the real Ollama client, and a service that loads its file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.cli import calibrate, evaluate
from app.core.config import Settings
from app.domain.calibration import FEATURES, CalibrationError
from app.evaluation.calibrate import fit_calibration
from app.main import create_app
from tests.integration.test_evaluate import (  # noqa: F401 (_restore_logging is an autouse fixture)
    DIALOGUES,
    MODEL,
    _restore_logging,
    scripted_reply,
    write_dialogues,
)
from tests.support.fake_ollama import FakeOllama, ScriptedReply

PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL], responder=scripted_reply) as server:
        monkeypatch.chdir(tmp_path)
        for name, value in {
            "SMALL_MODEL_BACKEND": "ollama",
            "OLLAMA_HOST": server.url,
            "LOCAL_MODEL_NAME": MODEL,
            "LARGE_MODEL_BACKEND": "none",
            "BANK_ANSWER_SIMILARITY": "2",
            "CANDIDATE_COUNT": "0",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("EXAMPLES_PATH", raising=False)
        monkeypatch.delenv("CALIBRATION_PATH", raising=False)
        yield server


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    return write_dialogues(tmp_path / "dev.dataflow_dialogues.jsonl", list(DIALOGUES))


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_calibrate_writes_reviewable_file(ollama, data_path, tmp_path, capsys):
    out = tmp_path / "calibration.json"

    status = calibrate.main(
        ["--data", str(data_path), "--out", str(out), "--folds", "2", "--no-progress"]
    )

    assert status == 0
    content = read(out)
    assert content["version"] in capsys.readouterr().out
    assert set(content["coefficients"]) == set(FEATURES)
    assert content["fitted_on"]["data"] == str(data_path)
    assert len(content["fitted_on"]["data_sha256"]) == 64
    assert content["fitted_on"]["small_model"] == MODEL
    assert sorted(content["fitted_on"]["dialogue_ids"]) == sorted(DIALOGUES)
    # The turn whose reply contains no plan has no first answer to calibrate.
    assert content["held_out"]["turns"] == 4
    assert "calibrated" in content["held_out"]["auroc"]
    assert len(content["confidence_sample"]) == 4
    assert (tmp_path / "calibration-run" / "turns.jsonl").is_file()


def test_calibrate_reuses_an_evaluation_run(ollama, data_path, tmp_path):
    run = tmp_path / "run"
    assert evaluate.main(["--data", str(data_path), "--out", str(run), "--no-progress"]) == 0
    calls = len(ollama.requests_to("/api/chat"))

    status = calibrate.main(
        [
            "--data",
            str(data_path),
            "--out",
            str(tmp_path / "calibration.json"),
            "--turns",
            str(run / "turns.jsonl"),
            "--folds",
            "2",
        ]
    )

    assert status == 0
    assert len(ollama.requests_to("/api/chat")) == calls
    assert read(tmp_path / "calibration.json")["fitted_on"]["turns_file"] == str(
        run / "turns.jsonl"
    )


def test_evaluation_leaves_out_the_calibration_dialogues(ollama, data_path, tmp_path, monkeypatch):
    out = tmp_path / "calibration.json"
    assert (
        calibrate.main(
            [
                "--data",
                str(data_path),
                "--out",
                str(out),
                "--limit",
                "2",
                "--seed",
                "4",  # dialogues a and b: first plans both right and wrong
                "--folds",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    fitted = set(read(out)["fitted_on"]["dialogue_ids"])
    monkeypatch.setenv("CALIBRATION_PATH", str(out))

    assert (
        evaluate.main(["--data", str(data_path), "--out", str(tmp_path / "eval"), "--no-progress"])
        == 0
    )

    report = read(tmp_path / "eval" / "report.json")
    turns = [json.loads(line) for line in (tmp_path / "eval" / "turns.jsonl").open()]
    assert report["run"]["dialogues_left_out_as_calibration_data"] == 2
    assert report["run"]["calibration_version"] == read(out)["version"]
    assert {turn["dialogue_id"] for turn in turns}.isdisjoint(fitted)
    answered = [turn for turn in turns if turn["features"]]
    assert answered
    assert all(turn["confidence_source"] == "calibrated" for turn in answered)


def test_calibration_with_unusable_turns_fails_clearly(ollama, tmp_path, capsys):
    turns = tmp_path / "turns.jsonl"
    turns.write_text(json.dumps({"dialogue_id": "dialogue-a", "features": None}) + "\n")
    data = write_dialogues(tmp_path / "dev.jsonl", ["dialogue-a"])

    status = calibrate.main(
        ["--data", str(data), "--out", str(tmp_path / "c.json"), "--turns", str(turns)]
    )

    assert status == 1
    assert "no turn has features" in capsys.readouterr().err


def write_calibration(path: Path, sample: list[float]) -> str:
    records = [
        {
            "dialogue_id": f"d{index}",
            "features": {name: (index / 20 if name == "similarity" else 0.0) for name in FEATURES},
            "small_correct": index >= 10,
            "signals": {},
        }
        for index in range(20)
    ]
    calibration = fit_calibration(records, folds=2, provenance={"small_model": MODEL})
    calibration = replace(calibration, confidence_sample=tuple(sample))
    calibration.save(path)
    return calibration.version


def service_settings(ollama_url: str, calibration_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        small_model_backend="ollama",
        ollama_host=ollama_url,
        local_model_name=MODEL,
        large_model_backend="none",
        log_format="text",
        bank_answer_similarity=2.0,
        calibration_path=calibration_path,
        delegation_min_samples=10,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def test_service_names_calibration_and_starts_warm(tmp_path):
    path = tmp_path / "calibration.json"
    version = write_calibration(path, [index / 20 for index in range(20)])
    with FakeOllama(models=[MODEL]) as server:
        server.enqueue(ScriptedReply(content=PLAN))
        with TestClient(create_app(service_settings(server.url, path))) as client:
            body = client.post(
                "/api/inference/generate-plan", json={"utterance": "Who is my boss?"}
            ).json()

    assert body["calibration_version"] == version
    assert body["confidence_source"] == "calibrated"
    assert body["delegation"]["warming_up"] is False
    assert body["delegation"]["samples"] == 20
    # Nearest-rank 20th percentile of 0.00, 0.05, ..., 0.95: the 4th value.
    assert body["delegation"]["threshold"] == pytest.approx(0.15)


def test_service_refuses_an_unusable_calibration_file(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{}")
    with FakeOllama(models=[MODEL]) as server:
        app = create_app(service_settings(server.url, path))
        with pytest.raises(CalibrationError, match=str(path)), TestClient(app):
            pass


def test_calibrate_rejects_turns_of_other_data(ollama, data_path, tmp_path, capsys):
    turns = tmp_path / "turns.jsonl"
    turns.write_text(json.dumps({"dialogue_id": "elsewhere", "features": None}) + "\n")

    status = calibrate.main(
        ["--data", str(data_path), "--out", str(tmp_path / "c.json"), "--turns", str(turns)]
    )

    assert status == 1
    assert "not in" in capsys.readouterr().err


def test_calibrate_warns_about_small_sample(ollama, data_path, tmp_path, capsys):
    status = calibrate.main(
        [
            "--data",
            str(data_path),
            "--out",
            str(tmp_path / "c.json"),
            "--folds",
            "2",
            "--no-progress",
        ]
    )

    assert status == 0
    assert "fewer than DELEGATION_MIN_SAMPLES=50" in capsys.readouterr().err
