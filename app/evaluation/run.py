"""Run SMCalFlow dialogues through the configured plan pipeline and write the reports.

The planner is built as the service's lifespan builds it (same settings, bank,
backend factories and delegation policy). Each backend is wrapped in a meter
that records the prompt size and the completion, so that token counts, and the
small model's output on a turn that failed, are known.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from app.api.schemas import CONTEXT_MAX_TURNS
from app.backends.base import ModelBackend
from app.backends.errors import BackendError
from app.backends.factory import build_large_backend, build_small_backend
from app.core.config import Settings
from app.domain.adaptation import adapt_plan
from app.domain.calibration import load_calibration
from app.domain.dialogue import Turn
from app.domain.example_bank import bank_functions, load_bank
from app.domain.lispress import LispressError, normalize
from app.domain.plan_output import extract_plan, logprob_confidence
from app.domain.prompts import PROMPT_VERSION
from app.domain.retrieval import ExampleIndex
from app.evaluation import metrics
from app.evaluation.metering import MeteredBackend, MeteredCall, metered
from app.evaluation.report import write_outputs
from app.main import build_planner
from app.planner import Planner, PlanResult, PlanUnavailableError

logger = logging.getLogger(__name__)

PlanFormat = Literal["v1", "v2"]


class EvaluationError(ValueError):
    """An evaluation that cannot start: an invalid data file or bank, or a small model not ready."""


@dataclass(frozen=True, slots=True)
class EvalTurn:
    """One non-skipped turn to evaluate, with the dialogue's earlier turns as context."""

    dialogue_id: str
    turn_index: int
    utterance: str
    gold: str
    context: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class EvaluationOptions:
    """The data, sample and output folder of one evaluation run."""

    data: Path
    out: Path
    bank: Path | None = None
    limit: int | None = None
    seed: int = 0
    plan_format: PlanFormat = "v1"
    prices: metrics.TokenPrices = metrics.DEFAULT_TOKEN_PRICES
    show_progress: bool = True
    context_ablation: bool = False


def read_dialogues(path: Path, plan_format: PlanFormat) -> list[list[EvalTurn]]:
    """Read a `*.dataflow_dialogues.jsonl` file into the non-skipped turns of each dialogue.

    Raises EvaluationError naming the line of the first malformed dialogue.
    """
    dialogues: list[list[EvalTurn]] = []
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                dialogues.append(_dialogue_turns(json.loads(line), plan_format))
            except KeyError as error:
                raise EvaluationError(
                    f"{path}:{line_number}: malformed dialogue (missing field {error})"
                ) from error
            except (ValueError, TypeError) as error:
                raise EvaluationError(
                    f"{path}:{line_number}: malformed dialogue ({error})"
                ) from error
    return dialogues


def _dialogue_turns(record: dict[str, Any], plan_format: PlanFormat) -> list[EvalTurn]:
    dialogue_id = record["dialogue_id"]
    history: list[Turn] = []
    turns: list[EvalTurn] = []
    for raw in record["turns"]:
        plan_text = raw["tags"]["original_lispress"] if plan_format == "v1" else raw["lispress"]
        try:
            gold = normalize(plan_text)
        except LispressError as error:
            raise ValueError(
                f"turn {raw['turn_index']}: gold plan does not parse: {error}"
            ) from error
        utterance = raw["user_utterance"]["original_text"]
        if not raw.get("skip", False):
            # The API accepts at most CONTEXT_MAX_TURNS earlier turns, the latest ones.
            context = tuple(history[-CONTEXT_MAX_TURNS:])
            turns.append(EvalTurn(dialogue_id, int(raw["turn_index"]), utterance, gold, context))
        agent_reply = (raw.get("agent_utterance") or {}).get("original_text")
        history.append(Turn(utterance=utterance, plan=gold, agent_reply=agent_reply))
    return turns


def sample_dialogues(
    dialogues: list[list[EvalTurn]], limit: int | None, seed: int
) -> list[list[EvalTurn]]:
    """Pick `limit` dialogues at random with `seed`, kept in file order; all when limit is None."""
    if limit is None or limit >= len(dialogues):
        return dialogues
    chosen = sorted(random.Random(seed).sample(range(len(dialogues)), limit))
    return [dialogues[index] for index in chosen]


def reject_data_as_bank(bank_path: Path, data_path: Path) -> None:
    """Raise EvaluationError when the example bank is the evaluation data file itself."""
    if bank_path.exists() and os.path.samefile(bank_path, data_path):
        raise EvaluationError(
            f"the example bank {bank_path} is the evaluation data file, and evaluating on "
            "the few-shot examples overstates exact match: pass another --bank or EXAMPLES_PATH"
        )


def count_shared_dialogues(example_ids: Sequence[str], turns: Sequence[EvalTurn]) -> int:
    """Count the data dialogues whose id prefixes an example id (`<dialogue_id>/<turn_index>`)."""
    bank_dialogues = {example_id.rsplit("/", 1)[0] for example_id in example_ids}
    shared = {turn.dialogue_id for turn in turns} & bank_dialogues
    if shared:
        logger.warning(
            "bank and data share dialogues shared=%d first=%s: exact match is overstated",
            len(shared),
            sorted(shared)[0],
        )
    return len(shared)


async def run_evaluation(options: EvaluationOptions, settings: Settings) -> dict[str, Any]:
    """Evaluate the sampled dialogues, write every report file and return report.json's content."""
    started = time.perf_counter()
    bank_path = options.bank or settings.examples_path
    all_dialogues = read_dialogues(options.data, options.plan_format)
    calibration = load_calibration(settings.calibration_path) if settings.calibration_path else None
    # A calibration is measured on dialogues it was not fitted on: leave those out.
    fitted = set(calibration.fitted_on.get("dialogue_ids", ())) if calibration else set()
    eligible = [
        dialogue for dialogue in all_dialogues if dialogue and dialogue[0].dialogue_id not in fitted
    ]
    dialogues = sample_dialogues(eligible, options.limit, options.seed)
    turns = [turn for dialogue in dialogues for turn in dialogue]
    if not turns:
        raise EvaluationError(f"{options.data} has no non-skipped turn to evaluate")

    reject_data_as_bank(bank_path, options.data)
    examples = load_bank(bank_path)
    index = ExampleIndex(examples)
    shared = count_shared_dialogues([example.id for example in examples], turns)
    known_functions = set(bank_functions(examples))

    small = metered(await build_small_backend(settings))
    large_backend = build_large_backend(settings)
    large = metered(large_backend) if large_backend else None
    try:
        await _check_small_ready(small)
        planner = build_planner(settings, index, small, large, calibration)
        # The ablation gets its own planner, so its confidences never reach the delegation
        # policy of the with-context run, which then decides as in a run without it.
        ablation_planner = (
            build_planner(settings, index, small, large, calibration)
            if options.context_ablation
            else None
        )
        records = await _evaluate_turns(
            planner, ablation_planner, small, large, turns, known_functions, options
        )
    finally:
        await small.aclose()
        if large is not None:
            await large.aclose()

    report = metrics.summarize(records, options.prices, large_configured=large is not None)
    report["run"] = {
        "data": str(options.data),
        "bank": str(bank_path),
        "bank_examples": len(examples),
        "bank_dialogues_shared_with_data": shared,
        "format": options.plan_format,
        "limit": options.limit,
        "seed": options.seed,
        "dialogues": len(dialogues),
        "dialogues_in_file": len(all_dialogues),
        "dialogues_without_turns": sum(not dialogue for dialogue in all_dialogues),
        "dialogues_left_out_as_calibration_data": sum(
            bool(dialogue) and dialogue[0].dialogue_id in fitted for dialogue in all_dialogues
        ),
        "calibration_version": calibration.version if calibration else None,
        "small_backend": small.backend,
        "small_model": small.model_name,
        "large_backend": large.backend if large else None,
        "large_model": large.model_name if large else None,
        "prompt_version": PROMPT_VERSION,
        "few_shot_k": settings.few_shot_k,
        "delegation_percentile": settings.delegation_percentile,
        "delegation_max_ratio": settings.delegation_max_ratio,
        "delegation_min_samples": settings.delegation_min_samples,
        "delegation_warmup_threshold": settings.delegation_warmup_threshold,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    write_outputs(options.out, report, records)
    return report


async def _check_small_ready(small: ModelBackend) -> None:
    status = await small.probe()
    if not status.ready:
        raise EvaluationError(f"the small model is not ready ({status.backend}: {status.detail})")


async def _evaluate_turns(
    planner: Planner,
    ablation_planner: Planner | None,
    small: MeteredBackend,
    large: MeteredBackend | None,
    turns: Sequence[EvalTurn],
    known_functions: set[str],
    options: EvaluationOptions,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    correct = 0
    progress = tqdm(turns, desc="plan-eval", unit="turn", disable=not options.show_progress)
    # Log lines go through tqdm, so that they print above the bar instead of breaking it.
    with logging_redirect_tqdm():
        for turn in progress:
            record = await _evaluate_turn(planner, small, large, turn, known_functions)
            if ablation_planner is not None:
                record.update(await _evaluate_without_context(ablation_planner, small, large, turn))
            records.append(record)
            correct += record["final_correct"]
            progress.set_postfix(exact_match=f"{correct / len(records):.3f}")
    return records


async def _evaluate_turn(
    planner: Planner,
    small: MeteredBackend,
    large: MeteredBackend | None,
    turn: EvalTurn,
    known_functions: set[str],
) -> dict[str, Any]:
    error: str | None = None
    result: PlanResult | None = None
    try:
        result = await planner.generate(turn.utterance, turn.context)
    except (PlanUnavailableError, BackendError) as failure:
        error = str(failure)
        logger.warning(
            "turn failed dialogue_id=%s turn_index=%d error=%s",
            turn.dialogue_id,
            turn.turn_index,
            error,
        )
    # Only calls that returned a completion count: the planner retries a prompt that is
    # too long with a shorter one, and a failed call is not billed.
    small_calls = _answered(small.take_calls())
    large_attempts = large.take_calls() if large else []
    large_calls = _answered(large_attempts)
    # The floor: the plan of the example whose utterance is most similar, as it is.
    nearest = planner.index.search_utterances(turn.utterance, 1)
    # The lookup: ranked with the previous turn too, names and numbers carried over.
    lookup = planner.index.search(turn.utterance, 1, turn.context[-1] if turn.context else None)

    record: dict[str, Any] = {
        "dialogue_id": turn.dialogue_id,
        "turn_index": turn.turn_index,
        "utterance": turn.utterance,
        "gold": turn.gold,
        "dependent": metrics.is_dependent(turn.gold),
        "floor_plan": nearest[0].example.plan if nearest else None,
        "lookup_plan": (
            adapt_plan(lookup[0].example.utterance, lookup[0].example.plan, turn.utterance)
            if lookup
            else None
        ),
        "error": error,
    }
    record.update(_small_fields(result, small_calls, nearest[0].similarity if nearest else 0.0))
    record.update(_final_fields(result, large_attempts))
    record["small_correct"] = metrics.exact_match(record["small_plan"], turn.gold)
    record["final_correct"] = metrics.exact_match(record["final_plan"], turn.gold)
    record["floor_correct"] = metrics.exact_match(record["floor_plan"], turn.gold)
    record["lookup_correct"] = metrics.exact_match(record["lookup_plan"], turn.gold)
    record["generated_correct"] = (
        metrics.exact_match(record["generated_plan"], turn.gold) if small_calls else None
    )
    record["large_correct"] = (
        metrics.exact_match(record["final_plan"] if record["model"] == "large" else None, turn.gold)
        if large_attempts
        else None
    )
    record["small_answered"] = bool(small_calls)
    record["small_invalid"] = record["small_answered"] and metrics.is_invalid_plan(
        record["small_plan"], known_functions
    )
    record["tokens"] = _token_fields(small_calls, large_calls, record["delegated"], turn.gold)
    return record


async def _evaluate_without_context(
    planner: Planner, small: MeteredBackend, large: MeteredBackend | None, turn: EvalTurn
) -> dict[str, Any]:
    """Plan the turn again with no earlier turns. A failure counts as a wrong plan."""
    plan: str | None = None
    try:
        plan = (await planner.generate(turn.utterance, ())).plan
    except (PlanUnavailableError, BackendError) as failure:
        logger.warning(
            "turn failed without context dialogue_id=%s turn_index=%d error=%s",
            turn.dialogue_id,
            turn.turn_index,
            failure,
        )
    finally:
        # The ablation's calls are left out of the token counts and the cost.
        small.take_calls()
        if large is not None:
            large.take_calls()
    return {
        "final_plan_without_context": plan,
        "final_correct_without_context": metrics.exact_match(plan, turn.gold),
    }


def _answered(calls: list[MeteredCall]) -> list[MeteredCall]:
    return [call for call in calls if call.completion is not None]


def _small_fields(
    result: PlanResult | None, calls: list[MeteredCall], retrieval_similarity: float
) -> dict[str, Any]:
    if result is not None and result.decision is not None:
        return {
            "small_plan": result.small_plan,
            "generated_plan": result.generated_plan,
            "origin": result.first_origin,
            "origin_example_id": result.origin_example_id,
            "features": result.features,
            "signals": {**result.signals, "confidence": result.confidence},
            "confidence_source": result.confidence_source,
            "decision": {
                "delegate": result.decision.delegate,
                "reason": str(result.decision.reason),
                "threshold": result.decision.threshold,
                "ratio": result.decision.ratio,
            },
            "delegated": result.decision.delegate,
        }

    # The small model failed, or answered with no usable plan and nothing stood in for
    # it, so the planner returned no result. Rebuild what it saw from the recorded call.
    completion = calls[-1].completion if calls else None
    if completion is None:
        signals = {"logprobs": None, "retrieval": retrieval_similarity, "confidence": None}
        return {
            "small_plan": None,
            "generated_plan": None,
            "origin": None,
            "origin_example_id": None,
            "features": None,
            "signals": signals,
            "confidence_source": None,
            "decision": None,
            "delegated": True,  # the planner sends the request to the large model alone
        }
    extracted = extract_plan(completion.text)
    signals = {
        "logprobs": logprob_confidence(completion.token_logprobs),
        "retrieval": retrieval_similarity,
        # The planner scores an unusable plan 0 and the policy always delegates it.
        "confidence": 0.0 if not extracted.valid else None,
    }
    decision = {"delegate": True, "reason": "invalid_plan", "threshold": None, "ratio": None}
    return {
        "small_plan": extracted.plan,
        "generated_plan": extracted.plan,
        "origin": "generated",
        "origin_example_id": None,
        "features": None,
        "signals": signals,
        "confidence_source": "invalid_plan" if not extracted.valid else None,
        "decision": decision,
        "delegated": True,
    }


def _final_fields(result: PlanResult | None, large_calls: list[MeteredCall]) -> dict[str, Any]:
    if result is None:
        return {
            "final_plan": None,
            "model": None,
            "delegation_status": "failed" if large_calls else None,
            "timings_ms": {},
        }
    return {
        "final_plan": result.plan,
        "model": result.model,
        "delegation_status": result.delegation_status,
        "timings_ms": dict(result.timings_ms),
    }


def _token_fields(
    small_calls: list[MeteredCall], large_calls: list[MeteredCall], delegated: bool, gold: str
) -> dict[str, Any]:
    small_tokens, small_basis = _call_tokens(small_calls)
    large_input, large_output, large_basis = 0, 0, "none"
    if large_calls:
        large_tokens = [_completion_tokens(call) for call in large_calls]
        large_input = sum(tokens[0] for tokens in large_tokens)
        large_output = sum(tokens[1] for tokens in large_tokens)
        large_basis = "reported" if all(tokens[2] for tokens in large_tokens) else "estimated"
    elif delegated and small_calls:
        # No large model ran: price the delegation as if it had, with the same prompt
        # and an answer as long as the gold plan.
        large_input = metrics.estimate_tokens(small_calls[-1].prompt_chars)
        large_output = metrics.estimate_tokens(len(gold))
        large_basis = "projected"
    return {
        "small": small_tokens,
        "small_basis": small_basis,
        "large_input": large_input,
        "large_output": large_output,
        "large_basis": large_basis,
    }


def _call_tokens(calls: list[MeteredCall]) -> tuple[int, str]:
    if not calls:
        return 0, "none"
    counted = [_completion_tokens(call) for call in calls]
    basis = "reported" if all(reported for _, _, reported in counted) else "estimated"
    return sum(prompt + output for prompt, output, _ in counted), basis


def _completion_tokens(call: MeteredCall) -> tuple[int, int, bool]:
    """Return prompt and output tokens of one call, and whether the backend reported both."""
    completion = call.completion
    prompt = completion.input_tokens if completion else None
    output = completion.output_tokens if completion else None
    reported = prompt is not None and output is not None
    if prompt is None:
        prompt = metrics.estimate_tokens(call.prompt_chars)
    if output is None:
        output = metrics.estimate_tokens(len(completion.text)) if completion else 0
    return prompt, output, reported
