"""The calibration: logistic regression, grouped folds, the file, and held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.domain.calibration import (
    FEATURES,
    Calibration,
    CalibrationError,
    fit_logistic,
    grouped_folds,
    load_calibration,
)
from app.evaluation.calibrate import (
    CalibrationDataError,
    accuracy_after_delegating,
    fit_calibration,
)


def test_logistic_fit_recovers_known_coefficients():
    generator = np.random.default_rng(0)
    matrix = generator.normal(size=(4000, 2))
    logits = 1.5 * matrix[:, 0] - 2.0 * matrix[:, 1] + 0.5
    labels = generator.random(4000) < 1 / (1 + np.exp(-logits))

    fit = fit_logistic(matrix, labels, l2=0.0)

    # Standardized features have unit scale here, so the coefficients match directly.
    assert fit.coefficients / fit.scales == pytest.approx([1.5, -2.0], abs=0.15)
    assert fit.intercept == pytest.approx(
        0.5 + fit.coefficients @ (fit.means / fit.scales), abs=0.15
    )


def test_constant_feature_gets_no_weight():
    matrix = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    labels = np.array([0, 0, 1, 1])

    fit = fit_logistic(matrix, labels, l2=1.0)

    assert fit.coefficients[1] == pytest.approx(0.0, abs=1e-9)
    assert fit.coefficients[0] > 0


def test_grouped_folds_keep_each_group_whole():
    groups = [f"dialogue-{index % 7}" for index in range(70)]

    folds = grouped_folds(groups, 3)

    assert sorted(np.concatenate(folds).tolist()) == list(range(70))
    for test in folds:
        inside = {groups[position] for position in test}
        outside = {groups[position] for position in range(70) if position not in set(test)}
        assert not inside & outside


def test_grouped_folds_are_stable():
    groups = ["a", "b", "c", "d", "a"]

    assert [fold.tolist() for fold in grouped_folds(groups, 2)] == [
        fold.tolist() for fold in grouped_folds(groups, 2)
    ]


def test_accuracy_after_delegating_lowest_scores():
    scores = [0.9, 0.1, 0.8, 0.2, None]
    correct = [True, False, True, True, False]

    # 40% of 5 turns: the None and the 0.1 go to an always-right model.
    assert accuracy_after_delegating(scores, correct, 0.4) == pytest.approx(1.0)
    assert accuracy_after_delegating(scores, correct, 0.0) == pytest.approx(0.6)


def record(dialogue: str, similarity: float, correct: bool) -> dict:
    features = {name: 0.0 for name in FEATURES}
    features["similarity"] = similarity
    return {
        "dialogue_id": dialogue,
        "features": features,
        "small_correct": correct,
        "signals": {"retrieval": similarity, "confidence": 0.5},
    }


def test_fit_calibration_measures_on_unseen_dialogues():
    generator = np.random.default_rng(1)
    records = []
    for index in range(300):
        similarity = float(generator.random())
        records.append(record(f"d{index // 3}", similarity, bool(generator.random() < similarity)))

    calibration = fit_calibration(records, folds=5, provenance={"data": "dev.jsonl"})

    held_out = calibration.held_out
    assert held_out["turns"] == 300
    assert held_out["dialogues"] == 100
    # Similarity drives correctness, so the calibrated score separates about as well as it.
    assert held_out["auroc"]["calibrated"] == pytest.approx(
        held_out["auroc"]["retrieval"], abs=0.02
    )
    assert held_out["auroc"]["calibrated"] > 0.7
    assert held_out["auroc"]["confidence"] == 0.5  # a constant signal separates nothing
    assert held_out["brier_score"] < held_out["brier_score_of_base_rate"]
    assert calibration.fitted_on["data"] == "dev.jsonl"
    assert len(calibration.fitted_on["dialogue_ids"]) == 100
    assert len(calibration.confidence_sample) == 300
    assert calibration.coefficients[FEATURES.index("similarity")] > 0


def test_fit_calibration_needs_right_and_wrong_answers():
    records = [record("d1", 0.5, True), record("d2", 0.7, True)]

    with pytest.raises(CalibrationDataError, match="all 2 first answers are right"):
        fit_calibration(records, provenance={})


def test_fit_calibration_skips_turns_without_features():
    records = [record("d1", 0.9, True), record("d2", 0.1, False), record("d3", 0.8, True)]
    records.append({"dialogue_id": "d4", "features": None, "small_correct": False, "signals": {}})

    calibration = fit_calibration(records, folds=2, provenance={})

    assert calibration.held_out["turns"] == 3


@pytest.fixture
def calibration() -> Calibration:
    records = [record(f"d{i}", i / 20, i >= 10) for i in range(20)]
    return fit_calibration(records, folds=2, provenance={"small_model": "m"})


def test_file_round_trip(calibration: Calibration, tmp_path: Path):
    path = tmp_path / "nested" / "calibration.json"
    calibration.save(path)

    loaded = load_calibration(path)

    assert loaded == calibration
    content = json.loads(path.read_text())
    assert set(content["coefficients"]) == set(FEATURES)  # readable by feature name
    features = {name: 0.0 for name in FEATURES}
    assert loaded.probability({**features, "similarity": 0.9}) > loaded.probability(features)


def test_version_names_date_and_coefficients(calibration: Calibration):
    date, digest = calibration.version.rsplit("-", 1)
    assert len(date) == 10
    assert len(digest) == 8


def test_missing_feature_is_an_error(calibration: Calibration):
    with pytest.raises(CalibrationError, match="similarity"):
        calibration.probability({})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version 99"),
        ({"features": ["similarity", "moon_phase"]}, "unknown features"),
        ({"intercept": "high"}, "malformed calibration"),
        ({"confidence_sample": [1.5]}, "confidence_sample"),
    ],
)
def test_invalid_file_is_rejected(calibration, tmp_path, change, message):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({**calibration.to_json(), **change}))

    with pytest.raises(CalibrationError, match=message) as error:
        load_calibration(path)
    assert str(path) in str(error.value)


def test_missing_and_non_json_files_are_named(tmp_path: Path):
    with pytest.raises(CalibrationError, match="cannot read calibration file"):
        load_calibration(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CalibrationError, match="is not JSON"):
        load_calibration(tmp_path / "bad.json")


def test_near_constant_feature_gets_unit_scale():
    matrix = np.array([[1.0, 0.1], [1.0 - 1e-8, 0.9], [1.0, 0.2], [1.0, 0.8]])
    labels = np.array([0.0, 1.0, 0.0, 1.0])

    fit = fit_logistic(matrix, labels)

    assert fit.scales[0] == 1.0
