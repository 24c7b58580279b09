"""`plan-import`: convert SMCalFlow dialogue files into a few-shot example bank.

Each input line is one dialogue (`*.dataflow_dialogues.jsonl`). Every turn that is
not marked `skip` becomes an example with the id `<dialogue_id>/<turn_index>`. The
turn before it in the same dialogue, skipped or not, becomes its `previous` turn.
A malformed line is reported on stderr with its file and line number and left out
as a whole, so every imported example keeps its true previous turn.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.domain.dialogue import Example, Turn
from app.domain.example_bank import write_bank
from app.domain.lispress import LispressError, normalize

PlanFormat = Literal["v1", "v2"]

# Beyond this many reports per file (for example when the wrong file is passed),
# the rest are only counted.
MAX_REPORTS_PER_FILE = 20


class MalformedDialogue(ValueError):
    """A dialogue line that cannot be imported."""


@dataclass
class ImportResult:
    """The examples imported from the sources and the counts for the summary."""

    examples: list[Example] = field(default_factory=list)
    dialogues: int = 0
    skipped_turns: int = 0
    malformed_lines: int = 0


@dataclass(frozen=True, slots=True)
class _ParsedTurn:
    index: int
    utterance: str
    plan: str
    agent_reply: str | None
    skip: bool


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of `plan-import`."""
    parser = argparse.ArgumentParser(
        prog="plan-import",
        description=(
            "Convert SMCalFlow *.dataflow_dialogues.jsonl files into a few-shot example "
            "bank (JSONL). Turns marked skip are left out. Malformed lines are reported "
            "on stderr and left out."
        ),
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="bank file to write (an existing file is replaced only after a successful import)",
    )
    parser.add_argument(
        "--format",
        choices=("v1", "v2"),
        default="v1",
        help=(
            "plan dialect to import: v1 takes tags.original_lispress (SMCalFlow 1.0, "
            "keyword arguments), v2 takes lispress (SMCalFlow 2.0); default: v1"
        ),
    )
    parser.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SRC",
        help="SMCalFlow dialogue file, one dialogue per line",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `plan-import` and return the process exit status."""
    args = build_parser().parse_args(argv)

    missing = [source for source in args.sources if not source.is_file()]
    for source in missing:
        problem = "is a directory, not a file" if source.is_dir() else "not found"
        print(f"plan-import: error: source file {source} {problem}", file=sys.stderr)
    if missing:
        return 1

    try:
        result = import_dialogues(args.sources, args.format)
    except OSError as error:
        print(
            f"plan-import: error: cannot read {error.filename}: {error.strerror}", file=sys.stderr
        )
        return 1

    if not result.examples:
        print(
            "plan-import: error: no examples imported "
            f"(dialogues={result.dialogues} skipped={result.skipped_turns} "
            f"malformed={result.malformed_lines}); {args.out} was not written",
            file=sys.stderr,
        )
        return 1

    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_bank(args.out, result.examples)
    except OSError as error:
        print(f"plan-import: error: cannot write {args.out}: {error.strerror}", file=sys.stderr)
        return 1

    print(
        f"plan-import: wrote {args.out}: dialogues={result.dialogues} "
        f"imported={len(result.examples)} skipped={result.skipped_turns} "
        f"malformed={result.malformed_lines} format={args.format}"
    )
    return 0


def import_dialogues(sources: Sequence[Path], plan_format: PlanFormat) -> ImportResult:
    """Read every source file, reporting each malformed line on stderr and counting it."""
    result = ImportResult()
    first_seen: dict[str, str] = {}
    for source in sources:
        reports = 0
        with source.open("rb") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                location = f"{source}:{line_number}"
                try:
                    dialogue_id, turns = _parse_dialogue(line, plan_format)
                    if dialogue_id in first_seen:
                        raise MalformedDialogue(
                            f"duplicate dialogue_id {dialogue_id!r}, first seen at "
                            f"{first_seen[dialogue_id]}"
                        )
                except MalformedDialogue as error:
                    result.malformed_lines += 1
                    reports += 1
                    if reports <= MAX_REPORTS_PER_FILE:
                        print(f"{location}: malformed line left out: {error}", file=sys.stderr)
                    continue

                first_seen[dialogue_id] = location
                result.dialogues += 1
                _add_examples(result, dialogue_id, turns)

        if reports > MAX_REPORTS_PER_FILE:
            hidden = reports - MAX_REPORTS_PER_FILE
            print(f"{source}: {hidden} more malformed lines not shown", file=sys.stderr)
    return result


def _add_examples(result: ImportResult, dialogue_id: str, turns: list[_ParsedTurn]) -> None:
    previous: _ParsedTurn | None = None
    for turn in turns:
        if turn.skip:
            result.skipped_turns += 1
        else:
            result.examples.append(
                Example(
                    id=f"{dialogue_id}/{turn.index}",
                    utterance=turn.utterance,
                    plan=turn.plan,
                    previous=None
                    if previous is None
                    else Turn(
                        utterance=previous.utterance,
                        plan=previous.plan,
                        agent_reply=previous.agent_reply,
                    ),
                )
            )
        previous = turn


def _parse_dialogue(line: bytes, plan_format: PlanFormat) -> tuple[str, list[_ParsedTurn]]:
    try:
        record = json.loads(line)
    except UnicodeDecodeError as error:
        raise MalformedDialogue(f"not valid UTF-8 ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise MalformedDialogue(f"invalid JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(record, dict):
        raise MalformedDialogue(f"expected a JSON object, got {type(record).__name__}")

    dialogue_id = record.get("dialogue_id")
    if not isinstance(dialogue_id, str) or not dialogue_id.strip():
        raise MalformedDialogue("missing or empty field 'dialogue_id'")
    raw_turns = record.get("turns")
    if not isinstance(raw_turns, list):
        raise MalformedDialogue(f"dialogue {dialogue_id}: missing field 'turns' (a list)")

    turns: list[_ParsedTurn] = []
    for position, raw_turn in enumerate(raw_turns):
        try:
            turns.append(_parse_turn(raw_turn, plan_format))
        except MalformedDialogue as error:
            raise MalformedDialogue(f"dialogue {dialogue_id} turn {position}: {error}") from error

    # Example ids are built from turn indices, so they must be unique in a dialogue.
    indices = [turn.index for turn in turns]
    if len(set(indices)) != len(indices):
        raise MalformedDialogue(f"dialogue {dialogue_id}: duplicate turn_index in {indices}")
    return dialogue_id, turns


def _parse_turn(raw_turn: Any, plan_format: PlanFormat) -> _ParsedTurn:
    if not isinstance(raw_turn, dict):
        raise MalformedDialogue(f"expected a JSON object, got {type(raw_turn).__name__}")

    index = raw_turn.get("turn_index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise MalformedDialogue("missing or non-integer field 'turn_index'")

    utterance = _nested_text(raw_turn, "user_utterance", "original_text")
    if utterance is None or not utterance.strip():
        raise MalformedDialogue("missing or empty field 'user_utterance.original_text'")

    plan_path = ("tags", "original_lispress") if plan_format == "v1" else ("lispress",)
    plan_text = _nested_text(raw_turn, *plan_path)
    plan_field = ".".join(plan_path)
    if plan_text is None:
        raise MalformedDialogue(f"missing field {plan_field!r}")
    try:
        plan = normalize(plan_text)
    except LispressError as error:
        raise MalformedDialogue(f"field {plan_field!r}: plan does not parse ({error})") from error

    skip = raw_turn.get("skip", False)
    if not isinstance(skip, bool):
        raise MalformedDialogue("field 'skip' is not a boolean")

    # The agent reply is context only, so a turn without one is still imported.
    agent_reply = _nested_text(raw_turn, "agent_utterance", "original_text")
    return _ParsedTurn(index, utterance, plan, agent_reply, skip)


def _nested_text(record: dict[str, Any], *keys: str) -> str | None:
    value: Any = record
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


if __name__ == "__main__":
    sys.exit(main())
