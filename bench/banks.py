"""Few-shot retrieval time per request on banks of 1,000, 10,000 and 100,000 examples.

    poetry run python -m bench.banks [--quick] [--bank data/bank.jsonl] [--sizes 1000,10000]

The banks come from the SMCalFlow bank: the dialogues file next to this
repository, imported as `plan-import` does, or an imported bank file given
with --bank. A bank up to the source's size is a random sample of it. A larger
one contains the whole source plus variants of its examples. In a variant, the
utterance's person names, weekdays, numbers (and so times), am/pm and event
words are swapped for others of the same kind, and so are the same words in
the plan's literals. Every variant's utterance differs from every other in the
bank.

For each size the index is built, then each query (a dev turn with its
previous turn) is timed through `ExampleIndex.search` alone and through the
whole retrieval stage (search, then the vote of the adapted plans). Growth is
the ratio of the median times between consecutive sizes: a bank ten times
larger should cost well under ten times more. Prints one JSON object as its
last line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.cli.import_bank import import_dialogues
from app.core.config import DEFAULT_EXAMPLES_PATH
from app.domain.dialogue import Example
from app.domain.example_bank import load_bank
from bench.common import BANK_DIALOGUES, BUILTIN_UTTERANCES, DEV_DIALOGUES, load_average
from bench.retrieval import Query, build_index, read_queries, time_retrieval

SIZES = (1_000, 10_000, 100_000)
# Target: retrieval under 1 ms per request at 10,000 examples.
TARGET_MS = 1.0
TARGET_SIZE = 10_000

NAMES = (
    "abby", "adam", "alex", "alice", "amir", "ana", "ben", "carla", "chen", "chris", "dana",
    "daniel", "david", "diego", "elena", "emma", "eric", "fatima", "grace", "hannah", "ian",
    "isabel", "jack", "jackson", "james", "jennifer", "jesse", "john", "julia", "karen",
    "kevin", "kim", "laura", "leo", "linda", "lucas", "maria", "marcus", "megan", "michael",
    "mike", "nadia", "nina", "noah", "oliver", "omar", "paul", "priya", "rachel", "raj",
    "ryan", "sam", "sarah", "sofia", "steve", "tom", "tyler", "victor", "wei", "zoe",
)  # fmt: skip
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
EVENTS = (
    "lunch", "dinner", "breakfast", "brunch", "coffee", "meeting", "call", "review", "sync",
    "party", "appointment", "workout", "interview", "standup", "drinks", "class", "session",
)  # fmt: skip
MERIDIEMS = ("am", "pm")
_WORD_CLASSES = {word: words for words in (NAMES, WEEKDAYS, EVENTS, MERIDIEMS) for word in words}
_TOKEN = re.compile(r"[A-Za-z]+|\d+")
MAX_TRIES_PER_VARIANT = 20


def _same_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[:1].isupper():
        return replacement.capitalize()
    return replacement


def _other_number(number: str, rng: random.Random) -> str:
    value = int(number)
    upper = 12 if value <= 12 else max(2 * value, 60)
    choice = rng.randint(1, upper)
    return str(choice if choice != value else choice % upper + 1)


def perturb(example: Example, rng: random.Random, variant: int) -> Example | None:
    """Return a variant of `example` with its swappable words replaced, or None if it has none.

    Every name, weekday, event word, am/pm and number of the utterance gets
    another of its kind, chosen independently. The plan gets the same
    replacements, case matched, in its string literals and `Number` arguments.
    """
    replacements: dict[str, str] = {}

    def swap(match: re.Match[str]) -> str:
        token = match.group()
        lower = token.lower()
        if lower not in replacements:
            if lower.isdigit():
                replacements[lower] = _other_number(lower, rng)
            elif lower in _WORD_CLASSES:
                options = _WORD_CLASSES[lower]
                replacements[lower] = rng.choice([word for word in options if word != lower])
            else:
                return token
        return _same_case(token, replacements[lower])

    utterance = _TOKEN.sub(swap, example.utterance)
    if not replacements:
        return None
    return replace(
        example,
        id=f"{example.id}~{variant}",
        utterance=utterance,
        plan=_replace_in_plan(example.plan, replacements),
    )


def _replace_in_plan(plan: str, replacements: dict[str, str]) -> str:
    def swap_word(word: re.Match[str]) -> str:
        token = word.group()
        replacement = replacements.get(token.lower())
        return token if replacement is None else _same_case(token, replacement)

    def swap_number(match: re.Match[str]) -> str:
        number = match.group(1)
        return f"( Number {replacements.get(number, number)}{match.group(2)} )"

    def swap_meridiem(match: re.Match[str]) -> str:
        meridiem = match.group(1).lower()
        return "Number" + replacements.get(meridiem, meridiem).upper()

    plan = re.sub(r'" [^"]* "', lambda literal: _TOKEN.sub(swap_word, literal.group()), plan)
    plan = re.sub(r"\( Number (\d+)(\.0)? \)", swap_number, plan)
    return re.sub(r"\bNumber(AM|PM)\b", swap_meridiem, plan)


def _swappable(utterance: str) -> bool:
    return any(
        token.isdigit() or token.lower() in _WORD_CLASSES for token in _TOKEN.findall(utterance)
    )


def generate_bank(source: Sequence[Example], size: int, seed: int = 0) -> list[Example]:
    """Return a bank of `size` examples with distinct utterances: a sample, or source + variants.

    Raises ValueError when the source cannot yield that many distinct utterances.
    """
    rng = random.Random(seed)
    if size <= len(source):
        return rng.sample(list(source), size)

    bank = list(source)
    seen = {example.utterance.lower() for example in bank}
    swappable = [example for example in source if _swappable(example.utterance)]
    variant = 0
    failures = 0
    while len(bank) < size:
        variant += 1
        candidate = perturb(rng.choice(swappable), rng, variant)
        if candidate is None or candidate.utterance.lower() in seen:
            failures += 1
            if failures > MAX_TRIES_PER_VARIANT * size:
                raise ValueError(
                    f"only {len(bank)} distinct utterances could be generated, not {size}"
                )
            continue
        seen.add(candidate.utterance.lower())
        bank.append(candidate)
    return bank


@lru_cache(maxsize=2)
def source_examples(bank_path: Path | None = None) -> tuple[tuple[Example, ...], str]:
    """Return the examples to generate banks from, and where they came from.

    In order: the bank file given, the SMCalFlow bank dialogues imported as
    `plan-import` does (its reports of malformed lines are dropped), or the
    default bank of the service.
    """
    if bank_path is not None:
        return tuple(load_bank(bank_path)), str(bank_path)
    if BANK_DIALOGUES.is_file():
        with contextlib.redirect_stderr(io.StringIO()):
            imported = import_dialogues([BANK_DIALOGUES], "v1")
        return tuple(imported.examples), f"{BANK_DIALOGUES.name} (imported, v1 plans)"
    return tuple(load_bank(DEFAULT_EXAMPLES_PATH)), f"{DEFAULT_EXAMPLES_PATH.name} (default bank)"


def dev_queries(limit: int) -> list[Query]:
    """Return dev turns with their previous turns, or the built-in utterances without."""
    if DEV_DIALOGUES.is_file():
        return read_queries(DEV_DIALOGUES, limit)
    return [(utterance, None) for utterance in BUILTIN_UTTERANCES][:limit]


@dataclass(frozen=True, slots=True)
class BankOptions:
    """The banks and queries of the retrieval benchmark."""

    sizes: tuple[int, ...] = SIZES
    queries: int = 2000
    k: int = 8
    bank_path: Path | None = None


QUICK = BankOptions(queries=400)


def run(options: BankOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate each bank, build its index and time retrieval; return JSON-ready figures."""
    source, origin = source_examples(options.bank_path)
    queries = dev_queries(options.queries)
    largest = generate_bank(source, max(options.sizes))
    by_size: dict[str, dict[str, float]] = {}
    for size in sorted(options.sizes):
        examples = largest if size == len(largest) else generate_bank(source, size)
        index, build_s = build_index(examples)
        figures = {"index_build_s": round(build_s, 3), **time_retrieval(index, queries, options.k)}
        by_size[str(size)] = figures
        progress(
            f"bank {size:>7,}: build {build_s:.2f} s, search p50/p99 "
            f"{figures['search_p50_ms']:.3f}/{figures['search_p99_ms']:.3f} ms, stage p50/p99 "
            f"{figures['stage_p50_ms']:.3f}/{figures['stage_p99_ms']:.3f} ms"
        )
        del index

    sizes = sorted(options.sizes)
    growth = {
        f"{smaller}->{larger}": {
            "size_ratio": round(larger / smaller, 2),
            "search_ratio": round(
                by_size[str(larger)]["search_p50_ms"] / by_size[str(smaller)]["search_p50_ms"], 2
            ),
            "stage_ratio": round(
                by_size[str(larger)]["stage_p50_ms"] / by_size[str(smaller)]["stage_p50_ms"], 2
            ),
        }
        for smaller, larger in zip(sizes, sizes[1:], strict=False)
    }
    return {
        "retrieval_ms": {size: figures["stage_p50_ms"] for size, figures in by_size.items()},
        "search_ms": {size: figures["search_p50_ms"] for size, figures in by_size.items()},
        "banks": by_size,
        "growth": growth,
        "source": origin,
        "source_examples": len(source),
        "queries": len(queries),
        "k": options.k,
        "load_average": load_average(),
    }


def describe(result: dict[str, Any]) -> list[str]:
    """Return readable lines for the growth of retrieval time."""
    lines = [
        f"{step}: bank x{ratios['size_ratio']:g}, search x{ratios['search_ratio']:g}, "
        f"stage x{ratios['stage_ratio']:g}"
        for step, ratios in result["growth"].items()
    ]
    at_target = result["retrieval_ms"].get(str(TARGET_SIZE))
    if at_target is not None:
        lines.append(
            f"retrieval stage p50 at {TARGET_SIZE:,} examples: {at_target:.3f} ms "
            f"(target < {TARGET_MS:g} ms)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.queries} queries per bank")
    parser.add_argument("--bank", type=Path, default=None, help="imported bank file (JSONL)")
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in SIZES),
        help="bank sizes, separated by commas",
    )
    args = parser.parse_args(argv)
    base = QUICK if args.quick else BankOptions()
    options = replace(
        base,
        sizes=tuple(int(size) for size in args.sizes.split(",")),
        bank_path=args.bank,
    )
    result = run(options)
    for line in describe(result):
        print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
