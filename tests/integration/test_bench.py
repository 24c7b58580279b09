"""The benchmark suite: overhead and concurrency runs of a few seconds, and the JSON summary.

The servers run as subprocesses on 127.0.0.1, as `python -m bench` starts
them. The figures of such short runs are checked for shape and sign only,
never against the service's targets.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from app.core.config import DEFAULT_EXAMPLES_PATH
from app.domain.example_bank import load_bank
from app.domain.lispress import parse
from bench import concurrency, overhead
from bench.__main__ import summary
from bench.banks import generate_bank, perturb

HEADLINE_KEYS = (
    "overhead_p50_ms",
    "overhead_p99_ms",
    "max_rps",
    "baseline_max_rps",
    "concurrent_rps",
    "concurrent_bound_rps",
    "retrieval_ms",
    "machine",
    "duration_s",
)
TINY_OVERHEAD = overhead.OverheadOptions(
    sequential_requests=60,
    warmup_requests=20,
    blocks=2,
    rps_seconds=1.0,
    rps_warmup_s=0.2,
    connection_counts=(4,),
)
TINY_CONCURRENCY = concurrency.ConcurrencyOptions(
    clients=8, model_latency_ms=50.0, seconds=1.5, warmup_s=0.3
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("bench")
    return {
        "overhead": overhead.run(TINY_OVERHEAD, workdir),
        "concurrency": concurrency.run(TINY_CONCURRENCY, workdir),
    }


@pytest.fixture(scope="module")
def final_json(results: dict[str, Any]) -> dict[str, Any]:
    line = json.dumps(summary(results, {}, quick=True, duration_s=1.0, load_start=[0.0, 0.0, 0.0]))
    return json.loads(line)


@pytest.mark.parametrize("key", HEADLINE_KEYS)
def test_summary_has_key(final_json: dict[str, Any], key: str) -> None:
    assert key in final_json


@pytest.mark.parametrize("key", ["max_rps", "baseline_max_rps", "concurrent_rps"])
def test_summary_rate_positive(final_json: dict[str, Any], key: str) -> None:
    assert final_json[key] > 0


def test_overhead_service_slower_than_baseline(final_json: dict[str, Any]) -> None:
    # The service does retrieval, a plan check and a policy decision per request;
    # the baseline returns a constant.
    assert final_json["overhead_p50_ms"] > 0


def test_overhead_latencies_positive(results: dict[str, Any]) -> None:
    figures = results["overhead"]
    for name in ("service", "baseline", "cached"):
        assert figures[name]["p50_ms"] > 0, name


def test_overhead_sequential_count(results: dict[str, Any]) -> None:
    counts = results["overhead"]["sequential_requests"]
    assert counts == {"service": 60, "baseline": 60, "cached": 60}


def test_concurrency_bound_from_options(final_json: dict[str, Any]) -> None:
    assert final_json["concurrent_bound_rps"] == 8 / 0.05


@pytest.mark.parametrize("variant", ["in_process", "ollama"])
def test_concurrency_variant_without_errors(results: dict[str, Any], variant: str) -> None:
    assert results["concurrency"][variant]["errors"] == 0


@pytest.mark.parametrize("variant", ["in_process", "ollama"])
def test_concurrency_latency_above_model(results: dict[str, Any], variant: str) -> None:
    # Every request waits for the simulated model at least once.
    assert results["concurrency"][variant]["p50_ms"] >= TINY_CONCURRENCY.model_latency_ms


def test_summary_machine_cores(final_json: dict[str, Any]) -> None:
    assert final_json["machine"]["cores"] >= 1


def test_generated_bank_distinct() -> None:
    source = load_bank(DEFAULT_EXAMPLES_PATH)
    bank = generate_bank(source, 10 * len(source))
    assert len({example.utterance.lower() for example in bank}) == len(bank)


def test_generated_bank_ids_unique() -> None:
    source = load_bank(DEFAULT_EXAMPLES_PATH)
    bank = generate_bank(source, 10 * len(source))
    assert len({example.id for example in bank}) == len(bank)


def test_perturb_swaps_plan_literals() -> None:
    source = load_bank(DEFAULT_EXAMPLES_PATH)
    example = next(item for item in source if "Priya" in item.utterance)
    variant = perturb(example, random.Random(0), 1)
    assert variant is not None
    assert "Priya" not in variant.utterance
    assert "priya" not in variant.plan.lower()
    parse(variant.plan)  # still a well-formed plan
