"""Time few-shot retrieval per request on an example bank.

    poetry run python -m bench.retrieval --bank data/bank.jsonl --queries DEV_FILE

Prints one JSON object: bank size, index build time, and per-query latency
percentiles over the turns of the queries file (SMCalFlow dialogues, one per
line), each with its previous turn as the planner passes it: of
ExampleIndex.search alone (`search_*`), and of the whole retrieval stage, the
search and the vote of the examples' adapted plans (`stage_*`). Runs
in-process, with no network. `bench.banks` times the same on generated banks
of several sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from app.domain.dialogue import Turn
from app.domain.example_bank import load_bank
from app.domain.retrieval import ExampleIndex
from app.planner import vote_for_plans
from bench.common import percentile

WARMUP_QUERIES = 50

Query = tuple[str, Turn | None]


def read_queries(path: Path, limit: int) -> list[Query]:
    """Read (utterance, previous turn) pairs, the previous turn with its agent reply."""
    queries: list[Query] = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            previous: Turn | None = None
            for turn in json.loads(line)["turns"]:
                utterance = turn["user_utterance"]["original_text"]
                queries.append((utterance, previous))
                reply = (turn.get("agent_utterance") or {}).get("original_text")
                previous = Turn(utterance, None, reply)
            if len(queries) >= limit:
                break
    return queries[:limit]


def percentiles(latencies_ms: list[float], prefix: str) -> dict[str, float]:
    """Return the median, 99th percentile and maximum, rounded to 0.1 microsecond."""
    latencies_ms = sorted(latencies_ms)
    return {
        f"{prefix}_p50_ms": round(statistics.median(latencies_ms), 4),
        f"{prefix}_p99_ms": round(percentile(latencies_ms, 0.99), 4),
        f"{prefix}_max_ms": round(latencies_ms[-1], 4),
    }


def time_retrieval(
    index: ExampleIndex, queries: Sequence[Query], k: int, warmup: int = WARMUP_QUERIES
) -> dict[str, float]:
    """Time the search and the whole retrieval stage of each query, after `warmup` queries."""
    for utterance, previous in queries[:warmup]:
        vote_for_plans(utterance, index.search(utterance, k, previous))
    search_ms: list[float] = []
    stage_ms: list[float] = []
    for utterance, previous in queries:
        started = time.perf_counter()
        few_shot = index.search(utterance, k, previous)
        searched = time.perf_counter()
        vote_for_plans(utterance, few_shot)
        search_ms.append((searched - started) * 1000)
        stage_ms.append((time.perf_counter() - started) * 1000)
    return {**percentiles(search_ms, "search"), **percentiles(stage_ms, "stage")}


def build_index(examples: Sequence) -> tuple[ExampleIndex, float]:
    """Build the index and return it with its build time in seconds."""
    started = time.perf_counter()
    index = ExampleIndex(examples)
    return index, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, required=True, help="example bank (JSONL)")
    parser.add_argument("--queries", type=Path, required=True, help="SMCalFlow dialogues file")
    parser.add_argument("--limit", type=int, default=2000, help="queries to time")
    parser.add_argument("-k", type=int, default=8, help="examples per query")
    args = parser.parse_args()

    index, build_s = build_index(load_bank(args.bank))
    queries = read_queries(args.queries, args.limit)
    print(
        json.dumps(
            {
                "bank_examples": len(index),
                "index_build_s": round(build_s, 3),
                "queries": len(queries),
                "k": args.k,
                **time_retrieval(index, queries, args.k),
            }
        )
    )


if __name__ == "__main__":
    main()
