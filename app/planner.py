"""The plan pipeline: retrieve examples, ask the small model, decide, maybe delegate.

The first answer comes from one of two places. The nearest examples' plans,
with the request's names and numbers carried over, vote. When the nearest
example is similar enough, the top-voted plan is the first answer and no model
runs. Otherwise the small model writes a plan. A model that can score replies
(the embedded one) also scores the top-voted plans, and the likeliest plan
wins. The delegation policy then decides, from the confidence of the first
answer, whether the large model should replace it.

This module ties the domain code to the model backends through their common
interface. It imports no web framework and no vendor SDK.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from opentelemetry import trace

from app.backends.base import CandidateScorer, ChatMessage, Completion, ModelBackend
from app.backends.errors import BackendError, PromptTooLongError
from app.core.policy_store import PolicyStore
from app.domain.adaptation import adapt_plan
from app.domain.calibration import Calibration
from app.domain.delegation import DelegationDecision
from app.domain.dialogue import Turn
from app.domain.lispress import (
    argument_names,
    function_names,
    parse,
    structure_problems,
    tokenize,
)
from app.domain.plan_output import ExtractedPlan, extract_plan
from app.domain.prompts import build_messages
from app.domain.retrieval import ExampleIndex, ScoredExample

logger = logging.getLogger(__name__)
# Spans go nowhere until app.core.tracing installs a tracer provider.
_tracer = trace.get_tracer(__name__)

ConfidenceSource = Literal["calibrated", "logprobs", "retrieval", "invalid_plan"]
DelegationStatus = Literal["not_wanted", "completed", "unavailable", "failed"]
# generated: the small model wrote the plan. ranked_example: the small model found an
# example's adapted plan likelier than its own. bank_answer: the nearest example was
# similar enough for the examples' vote to answer, and no model ran. large_model: the
# large model wrote it.
# nearest_example: the small model's plan was unusable and could not rank the examples'
# plans, so the nearest example's adapted plan is returned in its place.
PlanOrigin = Literal["generated", "ranked_example", "nearest_example", "bank_answer", "large_model"]
BANK_BACKEND = "example-bank"
# Failure sentences shown to API clients in `delegation.error` or a problem's detail.
# The specifics (the parse error, the backend's message) go to the service log.
NO_LARGE_MODEL = "No large model is configured."
SMALL_NO_PLAN = "The small model returned no usable plan."
LARGE_NO_PLAN = "The large model returned no usable plan."


class PlanUnavailableError(Exception):
    """No backend produced a usable plan.

    `backend_errors` maps each backend to its detailed error, for the service log.
    `public_errors` has one sentence per failed model that an API client may see.
    """

    def __init__(
        self,
        status_code: int,
        backend_errors: dict[str, str],
        public_errors: Sequence[str] = (),
    ) -> None:
        details = "; ".join(f"{name}: {error}" for name, error in backend_errors.items())
        super().__init__(f"no usable plan ({details})")
        self.status_code = status_code
        self.backend_errors = backend_errors
        self.public_errors = tuple(public_errors)


@dataclass(slots=True)
class PlanResult:
    """The outcome of one answered request, with the inputs of each decision."""

    plan: str
    model: Literal["small", "bank", "large"]
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
    origin: PlanOrigin = "generated"
    first_origin: PlanOrigin = "generated"  # the origin before any delegation
    origin_example_id: str | None = None  # the example whose plan was adapted, if any
    generated_plan: str | None = None  # the small model's own plan, when it wrote one
    generated_problem: str | None = None  # why that plan failed the plan check, if it did
    features: dict[str, float] = field(default_factory=dict)
    calibration_version: str | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A plan that may answer the request, and how likely the small model finds it.

    `vote` is the plan's share of the nearest examples' weight (see
    `vote_for_plans`); 0 for a plan no example has.
    """

    plan: str
    origin: PlanOrigin
    example_id: str | None = None
    logprobs: tuple[float, ...] | None = None
    vote: float = 0.0

    @property
    def score(self) -> float | None:
        """The plan's log probability (the sum over its tokens), or None when not scored."""
        if not self.logprobs:
            return None
        return sum(self.logprobs)

    @property
    def mean_logprob(self) -> float | None:
        """The mean token log-probability, or None when the plan was not scored."""
        if not self.logprobs:
            return None
        return sum(self.logprobs) / len(self.logprobs)


@dataclass(frozen=True, slots=True)
class _FirstAnswer:
    """The answer before delegation, with what the policy and the response need."""

    plan: str | None
    origin: PlanOrigin
    example_id: str | None
    generated: ExtractedPlan | None  # None when no model ran
    generated_problem: str | None  # why the generated plan failed the plan check
    confidence: float
    source: ConfidenceSource
    signals: dict[str, float | None]
    features: dict[str, float]

    @property
    def generated_usable(self) -> bool:
        """False when the small model ran and its own plan is unusable."""
        if self.generated is None:
            return True
        return self.generated.valid and self.generated_problem is None


class Planner:
    """The pipeline from utterance to plan; one instance serves all requests concurrently."""

    def __init__(
        self,
        *,
        index: ExampleIndex,
        small: ModelBackend,
        large: ModelBackend | None,
        policy: PolicyStore,
        few_shot_k: int,
        small_max_tokens: int,
        large_max_tokens: int,
        known_functions: frozenset[str] | None = None,
        known_arguments: Mapping[str, frozenset[str]] | None = None,
        bank_answer_similarity: float = 2.0,
        candidate_count: int = 0,
        calibration: Calibration | None = None,
        small_context_turns: int = 10,
    ) -> None:
        """Create the pipeline.

        `known_functions` are the function names a plan may use, normally those of
        the example bank; a plan with any other name fails the plan check. None
        turns the check off. `known_arguments` maps each function to the keywords
        its calls may pass. A request whose nearest example has at least
        `bank_answer_similarity` is answered from the bank (above 1: never).
        `candidate_count` nearest examples' adapted plans compete with the small
        model's plan when the backend can score them. `calibration` turns the
        answer's signals into its confidence; without it the confidence is the
        plan's geometric-mean token probability. The small model sees the last
        `small_context_turns` turns of the context.
        """
        self.index = index
        self.small = small
        # Checked once, because isinstance against a runtime-checkable Protocol inspects
        # every member (7 µs per check on the development machine).
        self._scorer = small if isinstance(small, CandidateScorer) else None
        self.large = large
        self.policy = policy
        self.few_shot_k = few_shot_k
        self.small_max_tokens = small_max_tokens
        self.large_max_tokens = large_max_tokens
        self.known_functions = known_functions
        self.known_arguments = known_arguments
        self.bank_answer_similarity = bank_answer_similarity
        self.candidate_count = candidate_count
        self.calibration = calibration
        self.small_context_turns = small_context_turns

    async def generate(self, utterance: str, context: Sequence[Turn] = ()) -> PlanResult:
        """Return the plan for `utterance`, or raise PlanUnavailableError.

        Each stage is a span of the `plan.generate` trace: retrieval,
        small_model, plan_check, delegation_decision and large_model.
        """
        with _tracer.start_as_current_span("plan.generate") as span:
            result = await self._generate(utterance, context)
            span.set_attribute("plan.origin", result.origin)
            span.set_attribute("plan.model", result.model)
            return result

    async def _generate(self, utterance: str, context: Sequence[Turn]) -> PlanResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()

        with _tracer.start_as_current_span("retrieval") as span:
            previous = context[-1] if context else None
            few_shot = self.index.search(utterance, self.few_shot_k, previous)
            candidates = vote_for_plans(utterance, few_shot)
            span.set_attribute("retrieval.examples", len(few_shot))
            span.set_attribute("retrieval.similarity", few_shot[0].similarity if few_shot else 0.0)
        timings["retrieval"] = _elapsed_ms(started)
        # The large model gets every example, since its context window is far larger. Its
        # prompt is built only when it is asked, which few requests are.
        all_examples = [scored.example for scored in few_shot]

        def large_prompt() -> list[ChatMessage]:
            return build_messages(utterance, context, all_examples)

        if few_shot and few_shot[0].similarity >= self.bank_answer_similarity:
            with _tracer.start_as_current_span("plan_check"):
                answer = self._answer(None, candidates, few_shot)
        else:
            small_started = time.perf_counter()
            try:
                with _tracer.start_as_current_span("small_model") as span:
                    span.set_attribute("backend", self.small.backend)
                    span.set_attribute("model", self.small.model_name)
                    completion, candidates, few_shot = await self._complete_small(
                        utterance, context, few_shot, candidates
                    )
            except BackendError as error:
                timings["small_model"] = _elapsed_ms(small_started)
                logger.warning(
                    "small model failed backend=%s error_type=%s error=%s",
                    self.small.backend,
                    type(error).__name__,
                    error.message,
                )
                return await self._answer_without_small(
                    large_prompt(), few_shot, error, timings, started
                )
            timings["small_model"] = _elapsed_ms(small_started)
            with _tracer.start_as_current_span("plan_check"):
                answer = self._answer(completion, candidates, few_shot)

        with _tracer.start_as_current_span("delegation_decision") as span:
            decision = await self.policy.decide(
                answer.confidence, plan_valid=answer.generated_usable
            )
            span.set_attribute("delegation.confidence", decision.confidence)
            span.set_attribute("delegation.threshold", decision.threshold)
            span.set_attribute("delegation.delegate", decision.delegate)
            span.set_attribute("delegation.reason", str(decision.reason))
        from_bank = answer.origin == "bank_answer"
        result = PlanResult(
            plan=answer.plan or "",
            model="bank" if from_bank else "small",
            backend=BANK_BACKEND if from_bank else self.small.backend,
            model_name=(answer.example_id or "") if from_bank else self.small.model_name,
            confidence=answer.confidence,
            confidence_source=answer.source,
            decision=decision,
            delegation_status="not_wanted",
            few_shot=few_shot,
            small_plan=answer.plan,
            small_error=answer.generated.error if answer.generated else None,
            timings_ms=timings,
            signals=answer.signals,
            plan_problem=answer.generated_problem if answer.plan is not None else None,
            origin=answer.origin,
            first_origin=answer.origin,
            origin_example_id=answer.example_id,
            generated_plan=answer.generated.plan if answer.generated else None,
            generated_problem=answer.generated_problem,
            features=answer.features,
            calibration_version=self.calibration.version if self.calibration else None,
        )
        if answer.plan is not None and answer.origin != "generated":
            result.plan_problem = None  # a bank plan uses bank functions only
        if decision.delegate:
            with _tracer.start_as_current_span("large_model") as span:
                await self._delegate(result, large_prompt())
                span.set_attribute("delegation.status", result.delegation_status)
        if not result.plan:
            generated_error = answer.generated.error if answer.generated else None
            large_error = result.delegation_error or (
                NO_LARGE_MODEL
                if self.large is None
                else f"The large model was not asked (reason: {decision.reason})."
            )
            raise PlanUnavailableError(
                502,
                {
                    self.small.backend: f"returned no usable plan: {generated_error}",
                    self.large.backend if self.large else "large model": large_error,
                },
                [SMALL_NO_PLAN, large_error],
            )
        timings["total"] = _elapsed_ms(started)
        return result

    async def _complete_small(
        self,
        utterance: str,
        context: Sequence[Turn],
        few_shot: list[ScoredExample],
        candidates: list[Candidate],
    ) -> tuple[Completion, list[Candidate], list[ScoredExample]]:
        """Ask the small model, shortening the prompt while it does not fit its context window.

        The least similar examples go first, then the context turns' plans and
        replies, then the older context turns. Returns the completion, the
        candidates with the model's scores when it can score them (otherwise
        unchanged), and the examples actually sent.
        """
        context = tuple(context)[-self.small_context_turns :] if self.small_context_turns else ()
        max_tokens = _generation_limit(self.small_max_tokens, candidates)
        scorer = self._scorer
        to_score = candidates[: self.candidate_count] if scorer is not None else []
        for example_count, prompt_context in _shorter_prompts(len(few_shot), context):
            examples = [scored.example for scored in few_shot[:example_count]]
            messages = build_messages(utterance, prompt_context, examples)
            try:
                if to_score and scorer is not None:
                    scored = await scorer.complete_and_score(
                        messages,
                        max_tokens=max_tokens,
                        candidates=[candidate.plan for candidate in to_score],
                    )
                    completion = scored.completion
                    candidates = [
                        replace(candidate, logprobs=logprobs)
                        for candidate, logprobs in zip(
                            to_score, scored.candidate_logprobs, strict=True
                        )
                    ] + candidates[len(to_score) :]
                else:
                    completion = await self.small.complete(messages, max_tokens=max_tokens)
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
            return completion, candidates, few_shot[:example_count]
        raise PromptTooLongError(
            self.small.backend,
            "the request alone does not fit the small model's context window",
            prompt_tokens=0,
            limit=0,
        )

    def _answer(
        self,
        completion: Completion | None,
        candidates: list[Candidate],
        few_shot: list[ScoredExample],
    ) -> _FirstAnswer:
        """Choose the first answer among the generated plan and the bank candidates.

        `completion` is None when the request is answered from the bank.
        """
        generated: ExtractedPlan | None = None
        problem: str | None = None
        pool = candidates[: self.candidate_count]
        if completion is not None:
            generated = self._extract(completion)
            if generated.valid:
                problem = self.check_plan(generated.plan or "")
            if generated.valid and problem is None:
                pool = _merge_generated(generated.plan or "", completion, pool)

        if completion is None:
            chosen: Candidate | None = replace(candidates[0], origin="bank_answer")
        else:
            chosen = _likeliest(pool)
            if chosen is not None and chosen.origin == "ranked_example" and chosen.score is None:
                chosen = replace(chosen, origin="nearest_example")
        signals, features = self._signals(chosen, pool, generated, problem, few_shot)
        confidence, source = self._confidence(chosen, generated, problem, signals, features)
        plan = chosen.plan if chosen else None
        if plan is None and generated is not None:
            plan = generated.plan  # unusable, and returned flagged when nothing replaces it
        return _FirstAnswer(
            plan=plan,
            origin=chosen.origin if chosen else "generated",
            example_id=chosen.example_id if chosen else None,
            generated=generated,
            generated_problem=problem,
            confidence=confidence,
            source=source,
            signals=signals,
            features=features,
        )

    def _extract(self, completion: Completion) -> ExtractedPlan:
        extracted = extract_plan(completion.text)
        if not extracted.valid and completion.stop_reason == "length":
            return ExtractedPlan(
                None,
                f"generation stopped at its token limit{_tokens_note(completion.output_tokens)} "
                f"before the plan was complete ({extracted.error})",
                extracted.wrapped,
            )
        return extracted

    def _signals(
        self,
        chosen: Candidate | None,
        pool: list[Candidate],
        generated: ExtractedPlan | None,
        problem: str | None,
        few_shot: list[ScoredExample],
    ) -> tuple[dict[str, float | None], dict[str, float]]:
        """Return the named signals of the chosen plan, and the calibration features."""
        nearest = few_shot[0] if few_shot else None
        score = chosen.score if chosen else None
        others = [
            candidate.score
            for candidate in pool
            if candidate is not chosen and candidate.score is not None
        ]
        margin = score - max(others) if score is not None and others else None
        mean_logprob = chosen.mean_logprob if chosen else None
        agreement = chosen.vote if chosen else 0.0
        signals: dict[str, float | None] = {
            "logprobs": math.exp(mean_logprob) if mean_logprob is not None else None,
            "retrieval": nearest.similarity if nearest else 0.0,
            "agreement": agreement,
            "margin": margin,
        }
        generated_plan = generated.plan if generated and generated.valid else None
        features = {
            "similarity": nearest.similarity if nearest else 0.0,
            "context_similarity": nearest.context_similarity if nearest else 0.0,
            "chosen_logprob": mean_logprob if mean_logprob is not None else 0.0,
            "margin": margin if margin is not None else 0.0,
            "agreement": agreement,
            "generated_agrees": float(chosen is not None and chosen.plan == generated_plan),
            "generated_valid": float(generated is None or (generated.valid and problem is None)),
            "bank_answer": float(generated is None),
            "plan_tokens": math.log1p(len(tokenize(chosen.plan))) if chosen else 0.0,
        }
        return signals, features

    def _confidence(
        self,
        chosen: Candidate | None,
        generated: ExtractedPlan | None,
        problem: str | None,
        signals: dict[str, float | None],
        features: dict[str, float],
    ) -> tuple[float, ConfidenceSource]:
        if chosen is None:
            return 0.0, "invalid_plan"
        if self.calibration is not None:
            probability = self.calibration.probability(features)
            signals["calibrated"] = probability
            return probability, "calibrated"
        if generated is not None and not (generated.valid and problem is None):
            return 0.0, "invalid_plan"
        if signals["logprobs"] is not None:
            return min(max(signals["logprobs"], 0.0), 1.0), "logprobs"
        # No log-probabilities: how close the nearest example is, a weaker signal but one
        # that needs nothing from the model.
        return float(signals["retrieval"] or 0.0), "retrieval"

    def check_plan(self, plan: str) -> str | None:
        """Return why a parseable plan fails the plan check, or None when it passes."""
        if self.known_functions is None:
            return None
        tree = parse(plan)
        malformed = structure_problems(tree)
        if malformed:
            return f"the plan is malformed: {_listed(malformed)}"
        unknown = sorted(function_names(tree) - self.known_functions)
        if unknown:
            return f"the plan uses functions that no bank example uses: {_listed(unknown)}"
        if self.known_arguments is None:
            return None
        unseen = sorted(
            f"{function} {keyword}"
            for function, keyword in argument_names(tree)
            if keyword not in self.known_arguments.get(function, frozenset())
        )
        if unseen:
            return f"the plan passes arguments that no bank example passes: {_listed(unseen)}"
        return None

    async def _delegate(self, result: PlanResult, messages: list) -> None:
        """Ask the large model. On failure, keep the small plan and record the error."""
        if self.large is None:
            result.delegation_status = "unavailable"
            result.delegation_error = NO_LARGE_MODEL
            return
        started = time.perf_counter()
        try:
            completion = await self.large.complete(messages, max_tokens=self.large_max_tokens)
        except BackendError as error:
            result.timings_ms["large_model"] = _elapsed_ms(started)
            result.delegation_status = "unavailable" if error.status_code == 503 else "failed"
            result.delegation_error = error.public_message("large")
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
            result.delegation_error = LARGE_NO_PLAN
            logger.warning("large model returned no plan error=%s", extracted.error)
            return
        problem = self.check_plan(extracted.plan or "")
        if problem is not None and result.plan and result.plan_problem is None:
            # A plan that passes the check is never replaced by one that fails it.
            result.delegation_status = "failed"
            result.delegation_error = f"The large model's plan fails the plan check: {problem}"
            logger.warning("large model plan failed the plan check problem=%s", problem)
            return
        result.plan = extracted.plan or ""
        result.plan_problem = problem
        result.model = "large"
        result.backend = self.large.backend
        result.model_name = self.large.model_name
        result.origin = "large_model"
        result.origin_example_id = None
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
        public_errors = [small_error.public_message("small")]
        if self.large is None:
            raise PlanUnavailableError(small_error.status_code, errors, public_errors)

        large_started = time.perf_counter()
        try:
            with _tracer.start_as_current_span("large_model") as span:
                span.set_attribute("fallback", "small_model_failed")
                completion = await self.large.complete(messages, max_tokens=self.large_max_tokens)
        except BackendError as error:
            errors[error.backend] = error.message
            public_errors.append(error.public_message("large"))
            # The small model's failure decides the status: a timeout stays a 504, and only
            # an unreachable or throttled small model makes it a 503 that invites a retry.
            raise PlanUnavailableError(small_error.status_code, errors, public_errors) from error
        timings["large_model"] = _elapsed_ms(large_started)

        extracted = extract_plan(completion.text)
        if not extracted.valid:
            errors[self.large.backend] = f"returned no usable plan: {extracted.error}"
            raise PlanUnavailableError(502, errors, [*public_errors, LARGE_NO_PLAN])
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
            origin="large_model",
            first_origin="large_model",
            timings_ms=timings,
        )


def _merge_generated(
    plan: str, completion: Completion, candidates: list[Candidate]
) -> list[Candidate]:
    """Add the generated plan to the candidates, or mark the equal candidate as generated.

    An equal candidate keeps its score when it has one, because that score
    includes the end of the reply like the other candidates' scores. Otherwise
    the log probabilities of the plan's generation score it.
    """
    merged: list[Candidate] = []
    found = False
    for candidate in candidates:
        if candidate.plan == plan:
            logprobs = candidate.logprobs or completion.token_logprobs or None
            merged.append(
                replace(candidate, origin="generated", example_id=None, logprobs=logprobs)
            )
            found = True
        else:
            merged.append(candidate)
    if not found:
        merged.insert(0, Candidate(plan, "generated", None, completion.token_logprobs or None))
    return merged


def vote_for_plans(utterance: str, few_shot: list[ScoredExample]) -> list[Candidate]:
    """Adapt the nearest examples' plans to the request and rank them by weighted vote.

    Each example votes for its adapted plan with the square of its ranking
    score, and a plan's vote is its share of all the weight. So several similar
    examples that agree on a plan outweigh one slightly closer example. On the
    2,026 SMCalFlow dev turns with the 9,490-example bank, the top-voted plan of
    the 8 nearest examples matched the gold plan on 30.3% of turns, and the
    nearest example's adapted plan on 28.3%.
    Returns distinct plans, highest vote first; equal votes keep retrieval order.
    """
    weights: dict[str, float] = defaultdict(float)
    first_example: dict[str, str] = {}
    for scored in few_shot:
        plan = adapt_plan(scored.example.utterance, scored.example.plan, utterance)
        weights[plan] += scored.score**2
        first_example.setdefault(plan, scored.example.id)
    total = sum(weights.values()) or 1.0
    ranked = sorted(weights, key=lambda plan: weights[plan], reverse=True)
    return [
        Candidate(plan, "ranked_example", first_example[plan], vote=weights[plan] / total)
        for plan in ranked
    ]


def _listed(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def _tokens_note(output_tokens: int | None) -> str:
    return f" of {output_tokens} tokens" if output_tokens else ""


def _generation_limit(configured: int, candidates: list[Candidate]) -> int:
    """Cap the small model's output at well above the longest similar plan's length.

    A plan far longer than every similar example's is almost always a model
    repeating itself, and at 60 tokens a second on two cores, running on to the
    configured limit costs seconds for nothing. SmolLM2 needs 0.29 tokens per
    character of a bank plan (20 plans measured), so characters / 2 is about
    1.7 times the longest plan's tokens.
    """
    if not candidates:
        return configured
    longest = max(len(candidate.plan) for candidate in candidates)
    return min(configured, max(64, longest // 2))


def _likeliest(candidates: list[Candidate]) -> Candidate | None:
    """Return the candidate with the highest score, or the first when none is scored."""
    if not candidates:
        return None
    scored = [candidate for candidate in candidates if candidate.score is not None]
    if not scored:
        return candidates[0]
    return max(scored, key=lambda candidate: candidate.score or -math.inf)


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
