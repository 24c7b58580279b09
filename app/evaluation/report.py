"""Write an evaluation's outputs: report.json, turns.jsonl, report.md and tradeoff.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.evaluation import metrics


def write_outputs(out: Path, report: dict[str, Any], records: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with (out / "turns.jsonl").open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_markdown(out / "report.md", report)
    write_tradeoff_plot(out / "tradeoff.png", records, report)


_METRIC_NOTES = (
    ("exact match", "share of turns whose plan, parsed as an S-expression, equals the gold plan."),
    (
        "small / final / large",
        "the first answer (the small model's choice among its own plan and the "
        "nearest examples' adapted plans, or the bank's answer when no model ran), the plan "
        "the service returned, and the large model's plan over the turns sent to it.",
    ),
    (
        "generated / lookup",
        "the small model's own plan over the turns where it ran, and the "
        "context-ranked nearest example's plan with the request's names and numbers carried "
        "over, with no model.",
    ),
    ("delegation rate", "share of turns the policy sent, or would send, to the large model."),
    (
        "confidence AUROC",
        "probability that a correct small plan scores above a wrong one on "
        "that signal (1 = perfect separation, 0.5 = chance); `confidence` is the value the "
        "service decided on. Turns without the signal are left out.",
    ),
    ("delegation precision", "share of delegated turns whose small plan was wrong."),
    ("errors caught", "share of the small model's wrong plans that were delegated."),
    (
        "invalid plans",
        "share of small-model answers that do not parse or call a function that no bank plan uses.",
    ),
    (
        "floor exact match",
        "exact match of returning the plan of the most similar bank "
        "utterance, as it is, with no model at all; final / floor is the ratio of the two.",
    ),
    (
        "first answers by origin",
        "generated: the small model's plan; ranked_example: an example's adapted plan the "
        "small model found likelier; nearest_example: the nearest example's adapted plan "
        "returned in place of an unusable one; bank_answer: the nearest example was at least "
        "BANK_ANSWER_SIMILARITY similar, so the examples' vote answered and no model ran.",
    ),
    ("dependent turns", "turns whose gold plan uses `refer` or a `Revise...` function."),
    (
        "cost",
        "US dollars per 1,000 requests at the prices listed, from the token counts "
        "described beside them.",
    ),
)

_WITHOUT_CONTEXT_NOTE = (
    "the same turns planned again by a second planner given no earlier turns, so the "
    "gap to the rows with context is what the dialogue context adds. A failed turn counts "
    "as wrong, and these calls are left out of the latency and cost."
)


def _figure(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    """Write report.md: what was run, the figures, and what each figure means."""
    run = report["run"]
    exact = report["exact_match"]
    lines = [
        "# Plan evaluation",
        "",
        f"- data: `{run['data']}` ({run['dialogues']} of {run['dialogues_in_file']} dialogues, "
        f"limit {run['limit']}, seed {run['seed']}, format {run['format']})",
        f"- bank: `{run['bank']}` ({run['bank_examples']} examples, "
        f"{run['bank_dialogues_shared_with_data']} dialogues shared with the data)",
        f"- small model: {run['small_backend']} `{run['small_model']}`",
        f"- large model: {run['large_backend'] or 'none'} `{run['large_model'] or '-'}`",
        f"- calibration: {run.get('calibration_version') or 'none'} "
        f"({run.get('dialogues_left_out_as_calibration_data', 0)} dialogues it was fitted on "
        "left out)",
        f"- prompt version {run['prompt_version']}, {run['few_shot_k']} few-shot examples, "
        f"delegation percentile {run['delegation_percentile']}, max ratio "
        f"{run['delegation_max_ratio']}",
        f"- {run['date']}, {run['wall_time_s']} s",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| turns | {report['turns']} ({report['failed_turns']} failed) |",
        f"| exact match, small | {_figure(exact['small'])} |",
        f"| exact match, final | {_figure(exact['final'])} |",
        f"| exact match, large | {_figure(exact['large'])} |",
        f"| exact match, generated | {_figure(exact.get('generated'))} |",
        f"| exact match, lookup | {_figure(exact.get('lookup'))} |",
        f"| floor exact match | {_figure(report['floor_exact_match'])} |",
        f"| final / floor | {_figure(report.get('final_over_floor'))} |",
        f"| delegation rate | {_figure(report['delegation_rate'])} |",
        f"| delegation precision | {_figure(report['delegation_precision'])} |",
        f"| errors caught | {_figure(report['errors_caught'])} |",
        f"| invalid plans | {_figure(report['invalid_plans'])} |",
    ]
    for signal, value in report["confidence_auroc"].items():
        lines.append(f"| confidence AUROC, {signal} | {_figure(value)} |")
    for origin, figures in report.get("origins", {}).items():
        lines.append(
            f"| first answers from {origin} ({figures['turns']}), exact match | "
            f"{_figure(figures['exact_match'])} |"
        )
    for kind, value in report["exact_match_by_dependency"].items():
        count = report["turns_by_dependency"][kind]
        lines.append(f"| exact match, {kind} turns ({count}) | {_figure(value)} |")
    without_context = report["exact_match_without_context"]
    if without_context is not None:
        lines.append(
            f"| exact match without context, final | {_figure(without_context['final'])} |"
        )
        for kind in ("dependent", "independent"):
            count = report["turns_by_dependency"][kind]
            value = _figure(without_context[kind])
            lines.append(f"| exact match without context, {kind} turns ({count}) | {value} |")
    cost = report["cost_per_1000_requests_usd"]
    lines.append(f"| cost per 1,000 requests (USD) | {_figure(cost['total'])} |")

    lines += ["", "| stage | p50 ms | p95 ms | turns |", "| --- | --- | --- | --- |"]
    for stage, figures in report["latency_ms"].items():
        lines.append(
            f"| {stage} | {_figure(figures['p50'])} | {_figure(figures['p95'])} | "
            f"{figures['count']} |"
        )

    prices = cost["prices_usd_per_1k_tokens"]
    lines += [
        "",
        f"Cost: small {_figure(cost['small'])} + large {_figure(cost['large'])} USD per 1,000 "
        f"requests, at {prices['small']} USD per 1,000 small-model tokens and "
        f"{prices['large_input']} / {prices['large_output']} USD per 1,000 large-model input / "
        f"output tokens. Small-model tokens: {cost['small_token_counts']}. Large-model tokens: "
        f"{cost['large_token_counts']}.",
    ]
    if report["turns"] < run["delegation_min_samples"]:
        lines += [
            "",
            f"The policy saw fewer than {run['delegation_min_samples']} confidences, so every "
            f"decision used the warm-up threshold {run['delegation_warmup_threshold']}, not the "
            "percentile.",
        ]
    lines += ["", "## What the figures mean", ""]
    lines += [f"- **{name}**: {note}" for name, note in _METRIC_NOTES]
    if without_context is not None:
        lines.append(f"- **without context**: {_WITHOUT_CONTEXT_NOTE}")
    lines += [
        "",
        "`tradeoff.png` plots final exact match against the share of turns delegated when "
        "the turns with the lowest value of each signal go first, assuming the large model "
        "is right whenever the small one is wrong.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_tradeoff_plot(path: Path, records: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Draw exact match against the delegated share, one curve per confidence signal."""
    # Imported here: matplotlib takes a second to load and only this function needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    small_correct = [record["small_correct"] for record in records]
    small_accuracy = report["exact_match"]["small"]
    figure = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()

    for signal in metrics.SIGNALS:
        scores = [record["signals"].get(signal) for record in records]
        if all(score is None for score in scores):
            continue
        curve = metrics.tradeoff_curve(scores, small_correct)
        auroc = report["confidence_auroc"][signal]
        label = f"{signal} (AUROC {_figure(auroc)})"
        axes.plot(curve.delegated * 100, curve.accuracy * 100, label=label)

    shares = metrics.tradeoff_curve([0.0] * len(records), small_correct).delegated
    axes.plot(
        shares * 100,
        metrics.random_router_accuracy(small_accuracy, shares) * 100,
        linestyle="--",
        color="grey",
        label="random router",
    )
    axes.plot(
        shares * 100,
        metrics.perfect_router_accuracy(small_accuracy, shares) * 100,
        linestyle=":",
        color="black",
        label="perfect router",
    )
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_xlabel("requests delegated (%)")
    axes.set_ylabel("final exact match (%)")
    axes.set_title(f"Delegation trade-off ({report['turns']} turns)")
    axes.text(
        0.98,
        0.02,
        "assumes the large model is right\nwhenever the small model is wrong",
        transform=axes.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.savefig(path)
