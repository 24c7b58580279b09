"""Time few-shot retrieval per request on an example bank.

    poetry run python -m bench.retrieval --bank data/bank.jsonl --queries DEV_FILE

Prints one JSON object: bank size, index build time, and per-query latency
percentiles of ExampleIndex.search over the utterances of the queries file
(SMCalFlow dialogues, one per line). Runs in-process, with no network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from app.domain.example_bank import load_bank
from app.domain.retrieval import ExampleIndex


def read_utterances(path: Path, limit: int) -> list[str]:
    utterances: list[str] = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            for turn in json.loads(line)["turns"]:
                utterances.append(turn["user_utterance"]["original_text"])
            if len(utterances) >= limit:
                break
    return utterances[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, required=True, help="example bank (JSONL)")
    parser.add_argument("--queries", type=Path, required=True, help="SMCalFlow dialogues file")
    parser.add_argument("--limit", type=int, default=2000, help="queries to time")
    parser.add_argument("-k", type=int, default=8, help="examples per query")
    args = parser.parse_args()

    examples = load_bank(args.bank)
    started = time.perf_counter()
    index = ExampleIndex(examples)
    build_s = time.perf_counter() - started

    utterances = read_utterances(args.queries, args.limit)
    for utterance in utterances[:50]:  # warm-up
        index.search(utterance, args.k)
    latencies_ms = []
    for utterance in utterances:
        started = time.perf_counter()
        index.search(utterance, args.k)
        latencies_ms.append((time.perf_counter() - started) * 1000)

    latencies_ms.sort()
    print(
        json.dumps(
            {
                "bank_examples": len(index),
                "index_build_s": round(build_s, 3),
                "queries": len(latencies_ms),
                "k": args.k,
                "p50_ms": round(statistics.median(latencies_ms), 4),
                "p99_ms": round(latencies_ms[int(0.99 * (len(latencies_ms) - 1))], 4),
                "max_ms": round(latencies_ms[-1], 4),
            }
        )
    )


if __name__ == "__main__":
    main()
