"""The delegation policy: which small-model answers go to the large model.

A request is delegated when the small model's confidence is at or below the
chosen percentile of recent confidences, and delegating it keeps the share of
delegated requests within the budget. Both windows are bounded and slide, so
nothing ever resets at once.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DelegationConfig", "DelegationDecision", "DelegationPolicy", "DelegationReason"]


class DelegationReason(StrEnum):
    """The reason a request was or was not delegated."""

    LOW_CONFIDENCE = "low_confidence"  # at or below the threshold, within budget
    INVALID_PLAN = "invalid_plan"  # the small plan is unusable, within budget
    ABOVE_THRESHOLD = "above_threshold"  # confident enough: the small plan is returned
    BUDGET_EXHAUSTED = "budget_exhausted"  # low confidence, but the budget is spent


@dataclass(frozen=True, slots=True)
class DelegationConfig:
    """The policy's parameters.

    `window_size` confidences and `ratio_window` decisions are kept. Until
    `min_samples` confidences are seen, `warmup_threshold` replaces the
    percentile, which is meaningless on a handful of values.
    """

    window_size: int = 500
    percentile: float = 20.0
    max_ratio: float = 0.2
    ratio_window: int = 500
    min_samples: int = 50
    warmup_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.ratio_window < 1:
            raise ValueError("window_size and ratio_window must be at least 1")
        if not 0 < self.percentile < 100:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")
        if not 0 <= self.max_ratio <= 1:
            raise ValueError(f"max_ratio must be in [0, 1], got {self.max_ratio}")
        if not 1 <= self.min_samples <= self.window_size:
            raise ValueError(
                f"min_samples must be in [1, window_size={self.window_size}], "
                f"got {self.min_samples}"
            )


@dataclass(frozen=True, slots=True)
class DelegationDecision:
    """A decision with the inputs that produced it."""

    delegate: bool
    reason: DelegationReason
    confidence: float
    threshold: float
    ratio: float  # the delegated share of the recent decisions, this one included
    samples: int  # confidences in the window when deciding
    warming_up: bool
    store: str = "memory"  # where the window and budget live: "memory" or "redis"
    sequence: int | None = None  # the decision's place in the fleet's order (redis only)


class DelegationPolicy:
    """A thread-safe percentile-threshold policy with a sliding delegation budget."""

    def __init__(self, config: DelegationConfig, seed_confidences: list[float] | None = None):
        self.config = config
        self._lock = threading.Lock()
        self._arrival: deque[float] = deque()
        self._sorted: list[float] = []
        self._decisions: deque[bool] = deque()
        self._delegated = 0
        # Replayed as requests, so that the threshold and the delegated share both start
        # where a service that had seen these confidences would be.
        for confidence in seed_confidences or ():
            self.decide(confidence)

    def decide(self, confidence: float, *, plan_valid: bool = True) -> DelegationDecision:
        """Decide for one request and record it.

        The threshold comes from the confidences seen before this one, so a
        request never sits inside its own percentile. An invalid plan is
        delegated whatever the threshold, because returning it is of no use,
        but only within the budget: otherwise a client could make every
        request reach the large model with utterances the small model fails on.
        """
        confidence = _checked(confidence)
        with self._lock:
            samples = len(self._sorted)
            warming_up = samples < self.config.min_samples
            threshold = self.config.warmup_threshold if warming_up else self._percentile()

            if plan_valid and confidence > threshold:
                delegate, reason = False, DelegationReason.ABOVE_THRESHOLD
            elif self._within_budget():
                delegate = True
                reason = (
                    DelegationReason.LOW_CONFIDENCE if plan_valid else DelegationReason.INVALID_PLAN
                )
            else:
                delegate, reason = False, DelegationReason.BUDGET_EXHAUSTED

            self._remember(confidence)
            self._record_decision(delegate)
            return DelegationDecision(
                delegate=delegate,
                reason=reason,
                confidence=confidence,
                threshold=threshold,
                ratio=self._delegated / len(self._decisions),
                samples=samples,
                warming_up=warming_up,
            )

    def observe(self, confidence: float, delegated: bool) -> None:
        """Record a decision taken elsewhere (by the shared store), without deciding.

        A replica mirrors the fleet's decisions this way, so that its own window is
        warm if it has to decide alone.
        """
        confidence = _checked(confidence)
        with self._lock:
            self._remember(confidence)
            self._record_decision(delegated)

    def recent_confidences(self) -> list[float]:
        """Return the confidences in the window, oldest first."""
        with self._lock:
            return list(self._arrival)

    def snapshot(self) -> tuple[float, float, int]:
        """Return the current threshold, the delegated share and the sample count."""
        with self._lock:
            samples = len(self._sorted)
            threshold = (
                self.config.warmup_threshold
                if samples < self.config.min_samples
                else self._percentile()
            )
            ratio = self._delegated / len(self._decisions) if self._decisions else 0.0
            return threshold, ratio, samples

    def _within_budget(self) -> bool:
        # The share after delegating this request must stay within the budget. Counting
        # this request in keeps ties (many equal confidences) and the first few requests
        # from overshooting: the first request alone would be a share of 1.0.
        window_full = len(self._decisions) == self.config.ratio_window
        slides_out = 1 if window_full and self._decisions[0] else 0
        delegated_after = self._delegated + 1 - slides_out
        decisions_after = len(self._decisions) + (0 if window_full else 1)
        return delegated_after <= self.config.max_ratio * decisions_after + 1e-9

    def _percentile(self) -> float:
        # Nearest-rank percentile: the smallest value with at least p% of values at or below it.
        rank = math.ceil(self.config.percentile / 100 * len(self._sorted))
        return self._sorted[max(rank, 1) - 1]

    def _remember(self, confidence: float) -> None:
        if len(self._arrival) == self.config.window_size:
            oldest = self._arrival.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._arrival.append(confidence)
        bisect.insort(self._sorted, confidence)

    def _record_decision(self, delegated: bool) -> None:
        if len(self._decisions) == self.config.ratio_window:
            self._delegated -= self._decisions.popleft()
        self._decisions.append(delegated)
        self._delegated += delegated


def _checked(confidence: float) -> float:
    if not (isinstance(confidence, int | float) and 0.0 <= confidence <= 1.0):
        raise ValueError(f"confidence must be a number in [0, 1], got {confidence!r}")
    return float(confidence)
