"""The few-shot example bank: a JSONL file of examples, one JSON object per line.

Each line is an object with these fields:

- `id`: a non-empty string, unique within the bank.
- `utterance`: the user's utterance (non-empty).
- `plan`: the gold plan in normalized Lispress (see `app.domain.lispress.normalize`).
- `previous`: null, or the turn before it as
  `{"utterance": str, "plan": str | null, "agent_reply": str | null}`.

Blank lines and unknown fields are ignored. The file has no header line.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.domain.dialogue import Example, Turn
from app.domain.lispress import (
    LispressError,
    argument_names,
    function_names,
    normalize,
    parse,
)

__all__ = [
    "BankError",
    "bank_arguments",
    "bank_functions",
    "example_to_json",
    "load_bank",
    "write_bank",
]


class BankError(ValueError):
    """An example bank file that cannot be loaded, with the line and field at fault."""

    def __init__(
        self, path: Path, message: str, line: int | None = None, field: str | None = None
    ) -> None:
        location = f"{path}:{line}" if line is not None else str(path)
        detail = f"field {field!r}: {message}" if field is not None else message
        super().__init__(f"invalid example bank {location}: {detail}")
        self.path = path
        self.line = line
        self.field = field


class _FieldError(ValueError):
    """A bad field in one line, before load_bank adds the file and line number."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def load_bank(path: str | os.PathLike[str]) -> list[Example]:
    """Read and validate a bank file, raising BankError that names the first bad line.

    Plans are returned in normalized form even when the file spells them otherwise.
    """
    bank_path = Path(path)
    try:
        raw = bank_path.read_bytes()
    except OSError as error:
        raise BankError(bank_path, f"cannot read the file ({error.strerror})") from error

    examples: list[Example] = []
    first_line_of_id: dict[str, int] = {}
    # Plan text -> normalized plan. Parsing dominates the load time, and in a bank
    # imported from dialogues each previous plan is usually the plan of the line before.
    normalized_plans: dict[str, str] = {}
    for line_number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        example = _example_from_line(bank_path, line_number, line, normalized_plans)
        first_line = first_line_of_id.setdefault(example.id, line_number)
        if first_line != line_number:
            raise BankError(
                bank_path,
                f"duplicate id {example.id!r}, first used on line {first_line}",
                line_number,
                "id",
            )
        examples.append(example)

    if not examples:
        raise BankError(bank_path, "the bank contains no examples (add at least one example line)")
    return examples


def _example_from_line(
    path: Path, line_number: int, line: bytes, normalized_plans: dict[str, str]
) -> Example:
    # utf-8-sig so that a byte order mark on the first line is not a JSON error.
    encoding = "utf-8-sig" if line_number == 1 else "utf-8"
    try:
        record = json.loads(line.decode(encoding))
    except UnicodeDecodeError as error:
        raise BankError(path, f"not valid UTF-8 ({error.reason})", line_number) from error
    except json.JSONDecodeError as error:
        raise BankError(path, f"invalid JSON ({error.msg})", line_number) from error

    try:
        return _example_from_record(record, normalized_plans)
    except _FieldError as error:
        raise BankError(path, str(error), line_number, error.field) from error


def _example_from_record(record: Any, normalized_plans: dict[str, str]) -> Example:
    if not isinstance(record, dict):
        raise _FieldError(None, f"expected a JSON object, got {type(record).__name__}")

    example_id = _required_text(record, "id", "id")
    utterance = _required_text(record, "utterance", "utterance")
    plan = _plan(_required_text(record, "plan", "plan"), "plan", normalized_plans)
    previous = _previous_turn(record.get("previous"), normalized_plans)
    return Example(id=example_id, utterance=utterance, plan=plan, previous=previous)


def _previous_turn(value: Any, normalized_plans: dict[str, str]) -> Turn | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _FieldError("previous", f"expected null or an object, got {type(value).__name__}")

    utterance = _required_text(value, "utterance", "previous.utterance")
    plan_text = _optional_text(value, "plan", "previous.plan")
    plan = None
    if plan_text is not None:
        plan = _plan(plan_text, "previous.plan", normalized_plans)
    agent_reply = _optional_text(value, "agent_reply", "previous.agent_reply")
    return Turn(utterance=utterance, plan=plan, agent_reply=agent_reply)


def _required_text(record: dict[str, Any], key: str, field: str) -> str:
    if key not in record or record[key] is None:
        raise _FieldError(field, "missing")
    value = record[key]
    if not isinstance(value, str):
        raise _FieldError(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _FieldError(field, "empty")
    return value


def _optional_text(record: dict[str, Any], key: str, field: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise _FieldError(field, f"expected a string or null, got {type(value).__name__}")
    return value


def _plan(text: str, field: str, normalized_plans: dict[str, str]) -> str:
    cached = normalized_plans.get(text)
    if cached is not None:
        return cached
    try:
        normalized = normalize(text)
    except LispressError as error:
        raise _FieldError(field, f"plan does not parse ({error})") from error
    normalized_plans[text] = normalized
    return normalized


def example_to_json(example: Example) -> dict[str, Any]:
    """Convert an example to the JSON object of one bank line."""
    previous = example.previous
    return {
        "id": example.id,
        "utterance": example.utterance,
        "plan": example.plan,
        "previous": None
        if previous is None
        else {
            "utterance": previous.utterance,
            "plan": previous.plan,
            "agent_reply": previous.agent_reply,
        },
    }


def write_bank(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    """Write examples as a bank file and return how many were written.

    The file is written under a temporary name in the same folder and then renamed,
    so readers see either the old bank or the complete new one. Plans are written
    as given: callers pass normalized plans. Raises ValueError for no examples,
    because load_bank rejects an empty bank.
    """
    bank_path = Path(path)
    lines = [json.dumps(example_to_json(example), ensure_ascii=False) for example in examples]
    if not lines:
        raise ValueError(f"no examples to write to {bank_path} (load_bank rejects an empty bank)")

    temporary_path = bank_path.with_name(f".{bank_path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with mode 0o666 applies the umask, so the bank gets the usual file mode
    # instead of the 0o600 that tempfile would give it.
    descriptor = os.open(temporary_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding="utf-8", newline="\n") as file:
            file.write("\n".join(lines))
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary_path, bank_path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    return len(lines)


def bank_arguments(examples: Iterable[Example]) -> dict[str, frozenset[str]]:
    """Map each function of the examples' plans to the keywords its calls use there."""
    arguments: dict[str, set[str]] = {}
    for example in examples:
        for function, keyword in argument_names(parse(example.plan)):
            arguments.setdefault(function, set()).add(keyword)
    return {function: frozenset(keywords) for function, keywords in arguments.items()}


def bank_functions(examples: Iterable[Example]) -> frozenset[str]:
    """Collect the function names that the examples' plans use."""
    names: set[str] = set()
    for example in examples:
        names |= function_names(parse(example.plan))
    return frozenset(names)
