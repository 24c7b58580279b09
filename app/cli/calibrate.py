"""`plan-calibrate`: fit the confidence calibration that the service loads from CALIBRATION_PATH.

Runs the dialogues of a SMCalFlow file through the pipeline, as plan-eval does
and with no calibration loaded, keeps that run's files beside the output, and
fits a logistic regression on the first answers' features. `--turns` reuses
the turns.jsonl of an earlier plan-eval run instead of running the models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.backends.errors import BackendError
from app.cli.evaluate import positive_int
from app.core.config import Settings
from app.core.logging import configure_logging
from app.domain.calibration import Calibration
from app.domain.example_bank import BankError
from app.domain.prompts import PROMPT_VERSION
from app.evaluation.calibrate import (
    CalibrationDataError,
    file_sha256,
    fit_calibration,
    read_turns,
)
from app.evaluation.run import EvaluationError, EvaluationOptions, run_evaluation


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `plan-calibrate`."""
    parser = argparse.ArgumentParser(
        prog="plan-calibrate",
        description=(
            "Fit the classifier that turns a first answer's signals into its confidence, "
            "measure it on dialogues it did not see (cross-validation grouped by dialogue), "
            "and write the calibration file that CALIBRATION_PATH names."
        ),
    )

    # The data, its sample and the bank, as plan-eval takes them.
    parser.add_argument(
        "--data", required=True, type=Path, metavar="PATH", help="*.dataflow_dialogues.jsonl file"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="calibration file to write (JSON)"
    )
    parser.add_argument(
        "--bank", type=Path, metavar="PATH", help="few-shot example bank (default: EXAMPLES_PATH)"
    )
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="use N dialogues drawn at random"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    parser.add_argument("--format", choices=("v1", "v2"), default="v1", help="gold plan dialect")

    # The classifier and its cross-validation.
    parser.add_argument(
        "--folds",
        type=_fold_count,
        default=5,
        help="cross-validation folds, 2 or more (default: 5)",
    )
    parser.add_argument(
        "--l2",
        type=_penalty,
        default=1.0,
        help="L2 penalty on standardized features, 0 or more (default: 1)",
    )

    # Reuse of an earlier run, and output.
    parser.add_argument(
        "--turns",
        type=Path,
        metavar="FILE",
        help="fit on the turns.jsonl of a plan-eval run of --data instead of running the models",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar on stderr"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plan-calibrate` and return the process exit status."""
    args = build_parser().parse_args(argv)
    if not args.data.is_file():
        return _fail(f"data file not found: {args.data}")
    try:
        settings = Settings()
    except ValidationError as error:
        return _fail(f"invalid settings: {error}")
    log_level = "WARNING" if settings.log_level == "INFO" else settings.log_level
    configure_logging(log_level, "text")

    try:
        turns_path = args.turns or _run_models(args, settings)
        records = read_turns(turns_path)
        _check_turns_from_data(records, args.data)
        calibration = fit_calibration(
            records, folds=args.folds, l2=args.l2, provenance=_provenance(args, turns_path)
        )
    except (
        EvaluationError,
        CalibrationDataError,
        BankError,
        BackendError,
        ValueError,
        OSError,
    ) as error:
        return _fail(str(error))

    calibration.save(args.out)
    _warn_about(calibration, settings.delegation_min_samples)
    auroc = calibration.held_out["auroc"]
    singles = {name: value for name, value in auroc.items() if name != "calibrated" and value}
    best = max(singles, key=lambda name: singles[name]) if singles else None
    print(
        f"plan-calibrate: wrote {args.out}: version={calibration.version} "
        f"turns={calibration.held_out['turns']} dialogues={calibration.held_out['dialogues']} "
        f"held_out_auroc={_short(auroc['calibrated'])}"
        + (f" best_single_signal={best}:{_short(singles[best])}" if best else "")
    )
    return 0


def _fold_count(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def _penalty(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _check_turns_from_data(records: list[dict[str, Any]], data: Path) -> None:
    """Raise ValueError when a turn's dialogue is not in the data file."""
    with data.open(encoding="utf-8") as file:
        dialogue_ids = {json.loads(line)["dialogue_id"] for line in file if line.strip()}
    foreign = sorted({record["dialogue_id"] for record in records} - dialogue_ids)
    if foreign:
        raise ValueError(
            f"{len(foreign)} dialogues of the turns file are not in {data} (first: "
            f"{foreign[0]}): pass the --data file that plan-eval ran on"
        )


def _warn_about(calibration: Calibration, min_samples: int) -> None:
    """Print a warning for a calibration the service should not rely on."""
    held_out = calibration.held_out
    auroc = held_out["auroc"]["calibrated"]
    if (
        auroc is None
        or auroc <= 0.5
        or held_out["brier_score"] >= held_out["brier_score_of_base_rate"]
    ):
        print(
            "plan-calibrate: warning: on unseen dialogues the calibration does no better than "
            f"chance or the base rate (AUROC {_short(auroc)}, Brier score "
            f"{held_out['brier_score']:.3f} against {held_out['brier_score_of_base_rate']:.3f}): "
            "calibrate on more dialogues before using it",
            file=sys.stderr,
        )
    sample_size = len(calibration.confidence_sample)
    if sample_size < min_samples:
        print(
            f"plan-calibrate: warning: the confidence sample has {sample_size} values, "
            f"fewer than DELEGATION_MIN_SAMPLES={min_samples}, so the service still starts "
            "with the warm-up threshold: calibrate on more dialogues",
            file=sys.stderr,
        )


def _run_models(args: argparse.Namespace, settings: Settings) -> Path:
    """Evaluate --data with no calibration loaded; return the run's turns.jsonl."""
    run_folder = args.out.with_name(f"{args.out.stem}-run")
    options = EvaluationOptions(
        data=args.data,
        out=run_folder,
        bank=args.bank,
        limit=args.limit,
        seed=args.seed,
        plan_format=args.format,
        show_progress=not args.no_progress,
    )
    asyncio.run(run_evaluation(options, settings.model_copy(update={"calibration_path": None})))
    return run_folder / "turns.jsonl"


def _provenance(args: argparse.Namespace, turns_path: Path) -> dict[str, Any]:
    report_path = turns_path.with_name("report.json")
    run = (
        json.loads(report_path.read_text(encoding="utf-8"))["run"] if report_path.is_file() else {}
    )
    return {
        "data": str(args.data),
        "data_sha256": file_sha256(args.data),
        "turns_file": str(turns_path),
        "bank": run.get("bank"),
        "bank_examples": run.get("bank_examples"),
        "small_backend": run.get("small_backend"),
        "small_model": run.get("small_model"),
        "prompt_version": run.get("prompt_version", PROMPT_VERSION),
        "limit": run.get("limit", args.limit),
        "seed": run.get("seed", args.seed),
    }


def _fail(message: str) -> int:
    print(f"plan-calibrate: error: {message}", file=sys.stderr)
    return 1


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
