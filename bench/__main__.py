"""Run every benchmark and print one JSON summary as the last line.

    poetry run python -m bench [--quick] [--only overhead,concurrency,retrieval,embedded]

Sections, in order: `overhead` (bench.overhead), `concurrency`
(bench.concurrency), `retrieval` (bench.banks) and `embedded`
(bench.embedded). Each prints readable lines as it finishes. Servers bind
127.0.0.1 on free ports and are stopped when their section ends, also on
error. A failed section is reported and the others still run. The exit
status is 1 when any section failed.

--quick shortens every section so the whole run takes about 3.5 minutes on
2 cores. The embedded section runs last, with the time left before
QUICK_LIMIT_S as its budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import banks, concurrency, embedded, overhead
from bench.common import load_average, machine

SECTIONS = ("overhead", "concurrency", "retrieval", "embedded")
# --quick must end within 5 minutes. The embedded sweep may overrun its budget by one
# planner call, of up to its 30 s timeout, so its budget ends this long after the start.
QUICK_LIMIT_S = 240.0
MIN_EMBEDDED_BUDGET_S = 45.0


def run_section(
    name: str, quick: bool, workdir: Path, started: float
) -> tuple[dict[str, Any], list[str]]:
    """Run one section; return its figures and its readable lines."""
    if name == "overhead":
        result = overhead.run(overhead.QUICK if quick else overhead.OverheadOptions(), workdir)
        return result, overhead.describe(result)
    if name == "concurrency":
        options = concurrency.QUICK if quick else concurrency.ConcurrencyOptions()
        result = concurrency.run(options, workdir)
        return result, concurrency.describe(result)
    if name == "retrieval":
        result = banks.run(banks.QUICK if quick else banks.BankOptions())
        return result, banks.describe(result)
    options = embedded.QUICK if quick else embedded.EmbeddedOptions()
    if quick:
        remaining = QUICK_LIMIT_S - (time.monotonic() - started)
        options = replace(options, budget_s=max(remaining, MIN_EMBEDDED_BUDGET_S))
    result = embedded.run(options)
    return result, embedded.describe(result)


def summary(
    results: dict[str, dict[str, Any]],
    errors: dict[str, str],
    *,
    quick: bool,
    duration_s: float,
    load_start: list[float],
) -> dict[str, Any]:
    """Build the final JSON object: the headline figures first, then each section in full."""
    overhead_result = results.get("overhead", {})
    concurrency_result = results.get("concurrency", {})
    retrieval_result = results.get("retrieval", {})
    embedded_result = results.get("embedded", {})
    headline: dict[str, Any] = {
        "overhead_p50_ms": overhead_result.get("overhead_p50_ms"),
        "overhead_p99_ms": overhead_result.get("overhead_p99_ms"),
        "max_rps": overhead_result.get("max_rps"),
        "baseline_max_rps": overhead_result.get("baseline_max_rps"),
        "cached_p50_ms": overhead_result.get("cached", {}).get("p50_ms"),
        "concurrent_rps": concurrency_result.get("concurrent_rps"),
        "concurrent_bound_rps": concurrency_result.get("concurrent_bound_rps"),
        "concurrent_in_process_rps": concurrency_result.get("in_process", {}).get("rps"),
        "concurrent_two_workers_rps": concurrency_result.get("ollama_two_workers", {}).get("rps"),
        "retrieval_ms": retrieval_result.get("retrieval_ms"),
        "search_ms": retrieval_result.get("search_ms"),
        "embedded_tokens_per_s": _embedded_speed(embedded_result),
        "embedded_prompt_size": _embedded_sweep(embedded_result),
    }
    return {
        **headline,
        "targets": _targets(headline),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "duration_s": round(duration_s, 1),
        "quick": quick,
        "errors": errors,
        "sections": results,
    }


def _embedded_speed(result: dict[str, Any]) -> dict[str, Any] | None:
    speed = result.get("speed")
    if not speed or speed["service"] is None or speed["direct"] is None:
        return None
    return {
        path: {
            "prompt": speed[path]["prompt_tokens_per_s"],
            "generation": speed[path]["generation_tokens_per_s"],
        }
        for path in ("service", "direct")
    }


def _embedded_sweep(result: dict[str, Any]) -> dict[str, Any] | None:
    sweep = result.get("prompt_size")
    if not sweep:
        return None
    return {
        k: {
            "prompt_tokens": row["prompt_tokens_mean"],
            "latency_p50_ms": row["latency_p50_ms"],
            "exact_match": row["exact_match"],
            "turns": row["turns"],
        }
        for k, row in sweep["by_k"].items()
    }


def _targets(headline: dict[str, Any]) -> dict[str, bool | None]:
    """Compare the figures with the service's targets; None when a figure is missing."""

    def check(value: Any, passes: Callable[[Any], bool]) -> bool | None:
        return None if value is None else passes(value)

    retrieval = headline["retrieval_ms"] or {}
    bound = headline["concurrent_bound_rps"]
    return {
        "overhead_p50_at_most_1_ms": check(
            headline["overhead_p50_ms"], lambda value: value <= overhead.TARGET_P50_MS
        ),
        "overhead_p99_at_most_5_ms": check(
            headline["overhead_p99_ms"], lambda value: value <= overhead.TARGET_P99_MS
        ),
        "concurrent_at_least_90_percent_of_bound": check(
            headline["concurrent_rps"],
            lambda value: value >= concurrency.TARGET_SHARE * bound,
        ),
        "retrieval_under_1_ms_at_10000": check(
            retrieval.get(str(banks.TARGET_SIZE)), lambda value: value < banks.TARGET_MS
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter runs: about 3.5 minutes on 2 cores"
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"sections to run, separated by commas, from: {', '.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")

    started = time.monotonic()
    load_start = load_average()
    print(f"machine: {machine()}; load average {load_start}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        for name in (section for section in SECTIONS if section in chosen):
            print(f"== {name}", flush=True)
            section_started = time.monotonic()
            try:
                results[name], lines = run_section(name, args.quick, Path(folder), started)
            except Exception as error:  # noqa: BLE001 (one failed section must not stop the rest)
                traceback.print_exc()
                errors[name] = f"{type(error).__name__}: {error}"[:2000]
                print(f"{name} failed: {errors[name]}", flush=True)
                continue
            for line in lines:
                print(line, flush=True)
            print(f"({name} took {time.monotonic() - section_started:.1f} s)", flush=True)

    duration_s = time.monotonic() - started
    print(
        json.dumps(
            summary(results, errors, quick=args.quick, duration_s=duration_s, load_start=load_start)
        )
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
