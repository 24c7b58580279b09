"""A confidence that combines the plan signals, fitted on dialogues with known plans.

Each first answer comes with a few signals: how similar the nearest examples
are, how likely the small model finds the chosen plan, whether the nearest
examples agree with it, and so on. A logistic regression over them estimates
the probability that the plan is right. `plan-calibrate` fits it and writes a
JSON file; the service loads that file from CALIBRATION_PATH.

The file is meant to be read in review. It names its version and the data it
was fitted on, and lists the coefficients by feature and the figures measured
on dialogues the fit did not see. A sample of held-out confidences in it
warms up the delegation window.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FEATURES",
    "Calibration",
    "CalibrationError",
    "fit_logistic",
    "grouped_folds",
    "load_calibration",
]

FORMAT_VERSION = 1

# The features a calibration may use, each a number computed for every first answer.
# A signal that does not apply to an answer (no model ran, a single candidate) is 0,
# and the indicator features say when that happened.
FEATURES = (
    "similarity",  # utterance similarity of the nearest example
    "context_similarity",  # previous-turn similarity of the nearest example
    "chosen_logprob",  # mean token log-probability of the chosen plan under the small model
    "margin",  # chosen plan's mean log-probability minus the best other candidate's
    "agreement",  # share of the nearest examples' adapted plans equal to the chosen plan
    "generated_agrees",  # 1 when the chosen plan is the small model's own plan
    "generated_valid",  # 1 when the small model's own plan passed the plan check
    "bank_answer",  # 1 when the plan came from the bank without asking the model
    "plan_tokens",  # ln(1 + number of tokens of the chosen plan)
)


class CalibrationError(ValueError):
    """A calibration file that cannot be used."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fitted logistic regression over standardized features, and its provenance."""

    version: str
    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    means: tuple[float, ...]
    scales: tuple[float, ...]
    fitted_on: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, Any] = field(default_factory=dict)
    confidence_sample: tuple[float, ...] = ()

    def probability(self, features: Mapping[str, float]) -> float:
        """Return the estimated probability that the plan is right, in [0, 1].

        Raises CalibrationError when a feature the calibration uses is missing.
        """
        try:
            values = [features[name] for name in self.features]
        except KeyError as error:
            raise CalibrationError(f"feature {error} is missing") from error
        logit = self.intercept + sum(
            coefficient * (value - mean) / scale
            for coefficient, value, mean, scale in zip(
                self.coefficients, values, self.means, self.scales, strict=True
            )
        )
        return _sigmoid(logit)

    def to_json(self) -> dict[str, Any]:
        """Return the file's content, with the coefficients keyed by feature for review."""
        content = asdict(self)
        content["format_version"] = FORMAT_VERSION
        content["features"] = list(self.features)
        content["coefficients"] = dict(zip(self.features, self.coefficients, strict=True))
        content["means"] = dict(zip(self.features, self.means, strict=True))
        content["scales"] = dict(zip(self.features, self.scales, strict=True))
        content["confidence_sample"] = [round(value, 6) for value in self.confidence_sample]
        return content

    def save(self, path: Path) -> None:
        """Write the calibration as indented JSON, creating the folder if needed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, content: Mapping[str, Any]) -> Calibration:
        """Read a calibration from its file's content; raise CalibrationError when invalid."""
        try:
            if content["format_version"] != FORMAT_VERSION:
                raise CalibrationError(
                    f"format_version {content['format_version']} is not {FORMAT_VERSION}: "
                    "run plan-calibrate again"
                )
            features = tuple(content["features"])
            unknown = sorted(set(features) - set(FEATURES))
            if unknown:
                raise CalibrationError(f"unknown features {unknown}; known: {list(FEATURES)}")
            calibration = cls(
                version=str(content["version"]),
                features=features,
                coefficients=tuple(float(content["coefficients"][name]) for name in features),
                intercept=float(content["intercept"]),
                means=tuple(float(content["means"][name]) for name in features),
                scales=tuple(float(content["scales"][name]) for name in features),
                fitted_on=dict(content.get("fitted_on", {})),
                held_out=dict(content.get("held_out", {})),
                confidence_sample=tuple(float(v) for v in content.get("confidence_sample", ())),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, CalibrationError):
                raise
            raise CalibrationError(f"malformed calibration ({error!r})") from error
        if any(scale <= 0 or not math.isfinite(scale) for scale in calibration.scales):
            raise CalibrationError("every scale must be a positive number")
        if any(not 0.0 <= value <= 1.0 for value in calibration.confidence_sample):
            raise CalibrationError("confidence_sample values must be in [0, 1]")
        return calibration


def load_calibration(path: Path) -> Calibration:
    """Load a calibration file; raise CalibrationError naming the file when it is unusable."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CalibrationError(f"cannot read calibration file {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise CalibrationError(f"calibration file {path} is not JSON: {error}") from error
    try:
        return Calibration.from_json(content)
    except CalibrationError as error:
        raise CalibrationError(f"calibration file {path}: {error}") from error


@dataclass(frozen=True, slots=True)
class LogisticFit:
    """Standardization and coefficients of a fitted logistic regression."""

    coefficients: np.ndarray
    intercept: float
    means: np.ndarray
    scales: np.ndarray

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """Return the probability of the positive class for each row of `matrix`."""
        logits = ((matrix - self.means) / self.scales) @ self.coefficients + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))


def fit_logistic(
    matrix: np.ndarray, labels: np.ndarray, *, l2: float = 1.0, iterations: int = 50
) -> LogisticFit:
    """Fit an L2-regularized logistic regression by Newton's method.

    Features are standardized first, so `l2` weighs them alike; the intercept
    is not penalized. A constant feature (spread under 1e-6) gets scale 1
    and, through the penalty, a zero coefficient.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if matrix.ndim != 2 or len(matrix) != len(labels) or len(labels) == 0:
        raise ValueError("need a non-empty 2-D feature matrix with one label per row")
    means = matrix.mean(axis=0)
    scales = matrix.std(axis=0)
    # Below the file's six decimals a spread is rounding noise (a similarity of 1.0 as
    # float32), and written out it would round to a scale of 0.
    scales[scales < 1e-6] = 1.0
    design = np.hstack([np.ones((len(matrix), 1)), (matrix - means) / scales])
    penalty = np.full(design.shape[1], l2)
    penalty[0] = 0.0
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        probabilities = 1.0 / (1.0 + np.exp(-(design @ weights)))
        gradient = design.T @ (probabilities - labels) + penalty * weights
        curvature = probabilities * (1.0 - probabilities)
        hessian = design.T @ (design * curvature[:, None]) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return LogisticFit(weights[1:], float(weights[0]), means, scales)


def grouped_folds(groups: Sequence[str], folds: int) -> list[np.ndarray]:
    """Split row positions into `folds` test sets, keeping each group in one of them.

    Groups are assigned by a hash of their name, so the split is the same on
    every run and every machine.
    """
    if folds < 2:
        raise ValueError("need at least 2 folds")
    assignment = np.array(
        [int(hashlib.sha256(group.encode()).hexdigest(), 16) % folds for group in groups]
    )
    return [np.flatnonzero(assignment == fold) for fold in range(folds)]


def version_of(content: Mapping[str, Any], date: str) -> str:
    """Name a calibration by its date and a hash of its coefficients."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
    return f"{date}-{digest}"


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exponential = math.exp(value)
    return exponential / (1.0 + exponential)
