"""The plan pipeline: retrieve examples, ask the small model, decide, maybe delegate.

This module ties the domain code to the model backends through their common
interface. It imports no web framework and no vendor SDK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from app.backends.base import Completion, ModelBackend
from app.backends.errors import BackendError, PromptTooLongError
from app.domain.delegation import DelegationDecision, DelegationPolicy
from app.domain.dialogue import Turn
from app.domain.lispress import function_names, parse
from app.domain.plan_output import ExtractedPlan, extract_plan, logprob_confidence
from app.domain.prompts import build_messages
from app.domain.retrieval import ExampleIndex, ScoredExample

logger = logging.getLogger(__name__)

ConfidenceSource = Literal["logprobs", "retrieval", "invalid_plan"]
DelegationStatus = Literal["not_wanted", "completed", "unavailable", "failed"]


class PlanUnavailableError(Exception):
    """No backend produced a usable plan. `backend_errors` maps each backend to its error."""

    def __init__(self, status_code: int, backend_errors: dict[str, str]) -> None:
        details = "; ".join(f"{name}: {error}" for name, error in backend_errors.items())
        super().__init__(f"no usable plan ({details})")
        self.status_code = status_code
        self.backend_errors = backend_errors


@dataclass(slots=True)
class PlanResult:
    """The outcome of one answered request, with the inputs of each decision."""

    plan: str
    model: Literal["small", "large"]
    backend: str
    model_name: str
    confidence: float | None
    confidence_source: ConfidenceSource | None
    decision: DelegationDecision | None
    delegation_status: DelegationStatus
    few_shot: list[ScoredExample]
    small_plan: str | None = None
    small_error: str | None = None
    delegation_error: str | None = None
    fallback: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Every confidence signal computed for the small plan, by name, for evaluation.
    signals: dict[str, float | None] = field(default_factory=dict)
    # Set when the returned plan parses but fails the plan check.
    plan_problem: str | None = None


@dataclass(frozen=True, slots=True)
class _SmallAnswer:
    extracted: ExtractedPlan
    confidence: float
    source: ConfidenceSource
    signals: dict[str, float | None]
    problem: str | None = None  # why a plan that parses failed the plan check

    @property
    def usable(self) -> bool:
        return self.extracted.valid and self.problem is None


class Planner:
    """The pipeline from utterance to plan; one instance serves all requests concurrently."""

    def __init__(
        self,
        *,
        index: ExampleIndex,
        small: ModelBackend,
        large: ModelBackend | None,
        policy: DelegationPolicy,
        few_shot_k: int,
        small_max_tokens: int,
        large_max_tokens: int,
        known_functions: frozenset[str] | None = None,
    ) -> None:
        """Create the pipeline.

        `known_functions` are the function names a plan may use, normally those of
        the example bank; a plan with any other name fails the plan check. None
        turns the check off.
        """
        self.index = index
        self.small = small
        self.large = large
        self.policy = policy
        self.few_shot_k = few_shot_k
        self.small_max_tokens = small_max_tokens
        self.large_max_tokens = large_max_tokens
        self.known_functions = known_functions

    async def generate(self, utterance: str, context: Sequence[Turn] = ()) -> PlanResult:
        """Return the plan for `utterance`, or raise PlanUnavailableError."""
        timings: dict[str, float] = {}
        started = time.perf_counter()

        few_shot = self.index.search(utterance, self.few_shot_k)
        timings["retrieval"] = _elapsed_ms(started)
        # The large model gets every example; its context window is far larger.
        messages = build_messages(utterance, context, [scored.example for scored in few_shot])

        small_started = time.perf_counter()
        try:
            completion, few_shot = await self._complete_small(utterance, context, few_shot)
        except BackendError as error:
            timings["small_model"] = _elapsed_ms(small_started)
            logger.warning(
                "small model failed backend=%s error_type=%s error=%s",
                self.small.backend,
                type(error).__name__,
                error.message,
            )
            return await self._answer_without_small(messages, few_shot, error, timings, started)
        timings["small_model"] = _elapsed_ms(small_started)

        answer = self._score(completion, few_shot)
        decision = self.policy.decide(answer.confidence, plan_valid=answer.usable)
        result = PlanResult(
            plan=answer.extracted.plan or "",
            model="small",
            backend=self.small.backend,
            model_name=self.small.model_name,
            confidence=answer.confidence,
            confidence_source=answer.source,
            decision=decision,
            delegation_status="not_wanted",
            few_shot=few_shot,
            small_plan=answer.extracted.plan,
            small_error=answer.extracted.error,
            timings_ms=timings,
            signals=answer.signals,
            plan_problem=answer.problem,
        )
        if decision.delegate:
            await self._delegate(result, messages)
        if not result.plan:
            raise PlanUnavailableError(
                502,
                {
                    self.small.backend: f"returned no usable plan: {answer.extracted.error}",
                    self.large.backend if self.large else "large model": (
                        result.delegation_error or "not configured"
                    ),
                },
            )
        timings["total"] = _elapsed_ms(started)
        return result

    async def _complete_small(
        self, utterance: str, context: Sequence[Turn], few_shot: list[ScoredExample]
    ) -> tuple[Completion, list[ScoredExample]]:
        """Ask the small model, shortening the prompt while it does not fit its context window.

        The least similar examples go first, then the context turns' plans and
        replies, then the older context turns. Returns the completion and the
        examples actually sent.
        """
        for example_count, prompt_context in _shorter_prompts(len(few_shot), context):
            examples = [scored.example for scored in few_shot[:example_count]]
            messages = build_messages(utterance, prompt_context, examples)
            try:
                completion = await self.small.complete(messages, max_tokens=self.small_max_tokens)
            except PromptTooLongError as error:
                logger.info(
                    "prompt too long, shortening backend=%s prompt_tokens=%d limit=%d "
                    "examples=%d context_turns=%d",
                    error.backend,
                    error.prompt_tokens,
                    error.limit,
                    example_count,
                    len(prompt_context),
                )
                continue
            return completion, few_shot[:example_count]
        raise PromptTooLongError(
            self.small.backend,
            "the request alone does not fit the small model's context window",
            prompt_tokens=0,
            limit=0,
        )

    def _score(self, completion: Completion, few_shot: list[ScoredExample]) -> _SmallAnswer:
        extracted = extract_plan(completion.text)
        if not extracted.valid and completion.stop_reason == "length":
            extracted = ExtractedPlan(
                None,
                f"generation stopped at the {self.small_max_tokens}-token limit before the "
                f"plan was complete ({extracted.error})",
                extracted.wrapped,
            )
        signals = {
            "logprobs": logprob_confidence(completion.token_logprobs),
            "retrieval": few_shot[0].similarity if few_shot else 0.0,
        }
        if not extracted.valid:
            return _SmallAnswer(extracted, 0.0, "invalid_plan", signals)
        problem = self.check_plan(extracted.plan or "")
        if problem is not None:
            return _SmallAnswer(extracted, 0.0, "invalid_plan", signals, problem)
        if signals["logprobs"] is not None:
            return _SmallAnswer(extracted, signals["logprobs"], "logprobs", signals)
        # No log-probabilities from this backend: fall back to how close the nearest
        # example is, a weaker signal but one that needs nothing from the model.
        return _SmallAnswer(extracted, signals["retrieval"], "retrieval", signals)

    def check_plan(self, plan: str) -> str | None:
        """Return why a parseable plan fails the plan check, or None when it passes."""
        if self.known_functions is None:
            return None
        unknown = sorted(function_names(parse(plan)) - self.known_functions)
        if not unknown:
            return None
        listed = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        return f"the plan uses functions that no bank example uses: {listed}"

    async def _delegate(self, result: PlanResult, messages: list) -> None:
        """Ask the large model. On failure, keep the small plan and record the error."""
        if self.large is None:
            result.delegation_status = "unavailable"
            result.delegation_error = "no large model is configured (LARGE_MODEL_BACKEND=none)"
            return
        started = time.perf_counter()
        try:
            completion = await self.large.complete(messages, max_tokens=self.large_max_tokens)
        except BackendError as error:
            result.timings_ms["large_model"] = _elapsed_ms(started)
            result.delegation_status = "unavailable" if error.status_code == 503 else "failed"
            result.delegation_error = error.message
            logger.warning(
                "large model failed backend=%s error_type=%s error=%s",
                self.large.backend,
                type(error).__name__,
                error.message,
            )
            return
        result.timings_ms["large_model"] = _elapsed_ms(started)

        extracted = extract_plan(completion.text)
        if not extracted.valid:
            result.delegation_status = "failed"
            result.delegation_error = f"the large model returned no usable plan: {extracted.error}"
            logger.warning("large model returned no plan error=%s", extracted.error)
            return
        result.plan = extracted.plan or ""
        result.plan_problem = self.check_plan(result.plan)
        result.model = "large"
        result.backend = self.large.backend
        result.model_name = self.large.model_name
        result.delegation_status = "completed"

    async def _answer_without_small(
        self,
        messages: list,
        few_shot: list[ScoredExample],
        small_error: BackendError,
        timings: dict[str, float],
        started: float,
    ) -> PlanResult:
        """Ask the large model alone. The policy records nothing, having no confidence."""
        errors = {small_error.backend: small_error.message}
        if self.large is None:
            raise PlanUnavailableError(small_error.status_code, errors)

        large_started = time.perf_counter()
        try:
            completion = await self.large.complete(messages, max_tokens=self.large_max_tokens)
        except BackendError as error:
            errors[error.backend] = error.message
            # The small model's failure decides the status: a timeout stays a 504, and only
            # an unreachable or throttled small model makes it a 503 that invites a retry.
            raise PlanUnavailableError(small_error.status_code, errors) from error
        timings["large_model"] = _elapsed_ms(large_started)

        extracted = extract_plan(completion.text)
        if not extracted.valid:
            errors[self.large.backend] = f"returned no usable plan: {extracted.error}"
            raise PlanUnavailableError(502, errors)
        timings["total"] = _elapsed_ms(started)
        return PlanResult(
            plan=extracted.plan or "",
            plan_problem=self.check_plan(extracted.plan or ""),
            model="large",
            backend=self.large.backend,
            model_name=self.large.model_name,
            confidence=None,
            confidence_source=None,
            decision=None,
            delegation_status="completed",
            few_shot=few_shot,
            small_error=small_error.message,
            fallback="small_model_failed",
            timings_ms=timings,
        )


def _shorter_prompts(
    example_count: int, context: Sequence[Turn]
) -> Iterator[tuple[int, Sequence[Turn]]]:
    """Yield (examples, context) for ever shorter prompts, the full prompt first."""
    while example_count > 0:
        yield example_count, context
        example_count //= 2
    yield 0, context
    if context:
        yield 0, [Turn(turn.utterance) for turn in context[-2:]]
        yield 0, []


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
