"""`plan-eval`: measure plan exact match and delegation quality on SMCalFlow dialogues.

Runs the non-skipped turns of a `*.dataflow_dialogues.jsonl` file through the
pipeline the service would build from the same settings (environment and
`.env`), and writes report.json, report.md, turns.jsonl and tradeoff.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.backends.errors import BackendError
from app.core.config import Settings
from app.core.logging import configure_logging
from app.domain.example_bank import BankError
from app.evaluation.metrics import DEFAULT_TOKEN_PRICES, TokenPrices
from app.evaluation.run import EvaluationError, EvaluationOptions, run_evaluation


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _price(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `plan-eval`."""
    parser = argparse.ArgumentParser(
        prog="plan-eval",
        description=(
            "Run the non-skipped turns of an SMCalFlow dialogues file through the configured "
            "plan pipeline (settings from the environment and .env, as the service reads "
            "them) and report exact match, delegation quality, latency and cost."
        ),
    )
    parser.add_argument(
        "--data", required=True, type=Path, metavar="PATH", help="*.dataflow_dialogues.jsonl file"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="folder for the report files"
    )
    parser.add_argument(
        "--bank",
        type=Path,
        metavar="PATH",
        help="few-shot example bank (default: EXAMPLES_PATH); must not be the --data file",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate N dialogues drawn at random (default: every dialogue)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed of the --limit sample (default: 0)"
    )
    parser.add_argument(
        "--format",
        choices=("v1", "v2"),
        default="v1",
        help=(
            "gold plan dialect: v1 is tags.original_lispress (SMCalFlow 1.0), v2 is lispress "
            "(SMCalFlow 2.0); use the dialect of the bank. Default: v1"
        ),
    )
    parser.add_argument(
        "--small-price-per-1k-tokens",
        type=_price,
        default=DEFAULT_TOKEN_PRICES.small,
        metavar="USD",
        help=(
            "small-model price per 1,000 tokens "
            f"(default: {DEFAULT_TOKEN_PRICES.small}, a self-hosted model)"
        ),
    )
    parser.add_argument(
        "--large-input-price-per-1k-tokens",
        type=_price,
        default=DEFAULT_TOKEN_PRICES.large_input,
        metavar="USD",
        help=(
            "large-model price per 1,000 input tokens (default: "
            f"{DEFAULT_TOKEN_PRICES.large_input}, Claude 3.5 Sonnet list price, 2024)"
        ),
    )
    parser.add_argument(
        "--large-output-price-per-1k-tokens",
        type=_price,
        default=DEFAULT_TOKEN_PRICES.large_output,
        metavar="USD",
        help=(
            "large-model price per 1,000 output tokens (default: "
            f"{DEFAULT_TOKEN_PRICES.large_output}, Claude 3.5 Sonnet list price, 2024)"
        ),
    )
    parser.add_argument(
        "--context-ablation",
        action="store_true",
        help=(
            "also plan every turn with no earlier turns given, and report that exact match "
            "beside the one with context, overall and for dependent and independent turns; "
            "doubles the model calls"
        ),
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar on stderr"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plan-eval` and return the process exit status."""
    args = build_parser().parse_args(argv)
    if not args.data.is_file():
        print(f"plan-eval: error: data file not found: {args.data}", file=sys.stderr)
        return 1

    try:
        settings = Settings()
    except ValidationError as error:
        print(f"plan-eval: error: invalid settings: {error}", file=sys.stderr)
        return 1
    # The backends log every completion at INFO, which would break up the progress bar,
    # so INFO is raised to WARNING here; DEBUG still shows everything.
    log_level = "WARNING" if settings.log_level == "INFO" else settings.log_level
    configure_logging(log_level, "text")

    options = EvaluationOptions(
        data=args.data,
        out=args.out,
        bank=args.bank,
        limit=args.limit,
        seed=args.seed,
        plan_format=args.format,
        prices=TokenPrices(
            small=args.small_price_per_1k_tokens,
            large_input=args.large_input_price_per_1k_tokens,
            large_output=args.large_output_price_per_1k_tokens,
        ),
        show_progress=not args.no_progress,
        context_ablation=args.context_ablation,
    )
    try:
        report = asyncio.run(run_evaluation(options, settings))
    except (EvaluationError, BankError, BackendError, ValueError, OSError) as error:
        print(f"plan-eval: error: {error}", file=sys.stderr)
        return 1

    exact = report["exact_match"]
    print(
        f"plan-eval: wrote {args.out}: turns={report['turns']} "
        f"exact_match_small={_short(exact['small'])} exact_match_final={_short(exact['final'])} "
        f"delegation_rate={_short(report['delegation_rate'])} "
        f"floor_exact_match={_short(report['floor_exact_match'])}"
        + _without_context_summary(report)
    )
    return 0


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _without_context_summary(report: dict[str, Any]) -> str:
    without_context = report["exact_match_without_context"]
    if without_context is None:
        return ""
    return f" exact_match_final_without_context={_short(without_context['final'])}"


if __name__ == "__main__":
    sys.exit(main())
