"""Fit the confidence calibration on evaluated turns, and measure it on unseen dialogues.

The turns come from an evaluation run (turns.jsonl), which contains each first
answer's features and whether its plan was right. Dialogues are split into
folds. A classifier fitted on the other folds scores each fold's turns, so
every held-out figure comes from dialogues that classifier did not see. The
calibration written to the file is then fitted on all the turns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.domain.calibration import (
    FEATURES,
    Calibration,
    fit_logistic,
    grouped_folds,
    version_of,
)
from app.evaluation import metrics

__all__ = ["CalibrationData", "fit_calibration", "read_turns"]

# Share of requests a held-out comparison delegates: the service's default budget.
DELEGATED_SHARE = 0.2


class CalibrationDataError(ValueError):
    """Turns that cannot train a calibration."""


@dataclass(frozen=True, slots=True)
class CalibrationData:
    """The turns to fit on: features, labels, dialogues and the uncalibrated signals."""

    matrix: np.ndarray
    labels: np.ndarray
    dialogues: list[str]
    signals: dict[str, list[float | None]]


def read_turns(path: Path) -> list[dict[str, Any]]:
    """Read a turns.jsonl file that plan-eval wrote."""
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def calibration_data(records: Sequence[dict[str, Any]]) -> CalibrationData:
    """Collect the turns whose first answer has features; raise when they cannot train."""
    usable = [record for record in records if record.get("features")]
    if not usable:
        raise CalibrationDataError(
            "no turn has features: the turns come from a run where no first answer was "
            "produced, or from a plan-eval older than the calibration"
        )
    labels = np.array([bool(record["small_correct"]) for record in usable])
    if labels.all() or not labels.any():
        raise CalibrationDataError(
            f"all {len(usable)} first answers are {'right' if labels.all() else 'wrong'}: "
            "a classifier needs both; evaluate more dialogues"
        )
    matrix = np.array([[float(record["features"][name]) for name in FEATURES] for record in usable])
    signals = {name: [record["signals"].get(name) for record in usable] for name in metrics.SIGNALS}
    return CalibrationData(matrix, labels, [record["dialogue_id"] for record in usable], signals)


def held_out_probabilities(data: CalibrationData, folds: int, l2: float) -> np.ndarray:
    """Score each turn with a classifier fitted on the other folds' dialogues."""
    probabilities = np.full(len(data.labels), np.nan)
    for test in grouped_folds(data.dialogues, folds):
        if len(test) == 0:
            continue
        train = np.setdiff1d(np.arange(len(data.labels)), test)
        train_labels = data.labels[train]
        if len(train) == 0:
            probabilities[test] = 0.5  # every dialogue is in this fold: nothing to learn from
            continue
        if train_labels.all() or not train_labels.any():
            # A fold whose training part has one class only: its base rate is the
            # best this fold can do.
            probabilities[test] = train_labels.mean()
            continue
        fit = fit_logistic(data.matrix[train], train_labels, l2=l2)
        probabilities[test] = fit.probabilities(data.matrix[test])
    return probabilities


def accuracy_after_delegating(
    scores: Sequence[float | None], correct: Sequence[bool], share: float
) -> float:
    """Exact match when the lowest-scored `share` of turns goes to an always-right large model.

    Turns without a score count as lowest. Ties are broken by turn order.
    """
    values = np.array([-np.inf if score is None else score for score in scores], dtype=float)
    order = np.argsort(values, kind="stable")
    delegated = np.zeros(len(values), dtype=bool)
    delegated[order[: int(round(share * len(values)))]] = True
    return float(np.mean(delegated | np.asarray(correct, dtype=bool)))


def fit_calibration(
    records: Sequence[dict[str, Any]],
    *,
    folds: int = 5,
    l2: float = 1.0,
    provenance: dict[str, Any],
    sample_size: int = 500,
) -> Calibration:
    """Measure by cross-validation, fit on every turn, and return the calibration.

    `provenance` describes the data (file, hash, model, bank) and is stored
    as `fitted_on`, with the dialogue ids and turn count added.
    """
    data = calibration_data(records)
    held_out = held_out_probabilities(data, folds, l2)
    correct = data.labels.tolist()
    signal_auroc = {name: metrics.auroc(values, correct) for name, values in data.signals.items()}
    combined = held_out.tolist()
    figures = {
        "method": (
            f"{folds}-fold cross-validation grouped by dialogue: every turn is scored by a "
            "classifier fitted on the other folds' dialogues"
        ),
        "turns": len(correct),
        "dialogues": len(set(data.dialogues)),
        "first_answer_exact_match": float(np.mean(data.labels)),
        "auroc": {"calibrated": metrics.auroc(combined, correct), **signal_auroc},
        "brier_score": float(np.mean((held_out - data.labels) ** 2)),
        "brier_score_of_base_rate": float(np.var(data.labels.astype(float))),
        f"exact_match_delegating_{int(DELEGATED_SHARE * 100)}_percent": {
            "calibrated": accuracy_after_delegating(combined, correct, DELEGATED_SHARE),
            **{
                name: accuracy_after_delegating(values, correct, DELEGATED_SHARE)
                for name, values in data.signals.items()
            },
        },
    }

    fit = fit_logistic(data.matrix, data.labels, l2=l2)
    parameters = {
        "features": list(FEATURES),
        "coefficients": [round(float(value), 6) for value in fit.coefficients],
        "intercept": round(fit.intercept, 6),
        "means": [round(float(value), 6) for value in fit.means],
        "scales": [round(float(value), 6) for value in fit.scales],
    }
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    return Calibration(
        version=version_of(parameters, date),
        features=FEATURES,
        coefficients=tuple(parameters["coefficients"]),
        intercept=parameters["intercept"],
        means=tuple(parameters["means"]),
        scales=tuple(parameters["scales"]),
        fitted_on={
            **provenance,
            "turns": len(correct),
            "dialogue_ids": sorted(set(data.dialogues)),
            "l2": l2,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        },
        held_out=figures,
        # Held-out confidences: what the service will see on new dialogues.
        confidence_sample=tuple(round(float(value), 6) for value in held_out[-sample_size:]),
    )


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
