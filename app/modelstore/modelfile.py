"""Parse an Ollama Modelfile into the fields of Ollama's create request.

Supported instructions, case-insensitive: FROM (exactly one), TEMPLATE, SYSTEM,
PARAMETER, LICENSE, MESSAGE and ADAPTER. A line whose first non-blank character
is `#` is a comment. A value is either the rest of the line, a double-quoted
string on one line (with `\\"` and `\\\\` escapes), or a `\"\"\"`-delimited
block that may span lines and is kept verbatim, newlines included.

PARAMETER values that are not quoted become int, float or bool when they read
as one. `stop` may repeat and is always a list of strings. Any other parameter,
and TEMPLATE or SYSTEM, may appear only once, so that an accidental second value
is reported instead of silently replacing the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.modelstore.errors import ModelfileError

ParameterValue = int | float | bool | str | list[str]

INSTRUCTIONS = ("FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "LICENSE", "MESSAGE", "ADAPTER")
MESSAGE_ROLES = ("system", "user", "assistant")
LIST_PARAMETERS = frozenset({"stop"})

_TRIPLE_QUOTE = '"""'
_INSTRUCTION_LINE = re.compile(r"^\s*(\S+)(?:\s+(.*))?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Modelfile:
    """The parsed instructions of one Modelfile."""

    from_: str
    from_line: int
    template: str | None = None
    system: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    licenses: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Value:
    text: str
    quoted: bool
    next_index: int  # index of the first line after the value


class _Builder:
    """Collects instructions while checking which ones may repeat."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.fields: dict[str, Any] = {}
        self.first_lines: dict[str, int] = {}
        self.parameters: dict[str, ParameterValue] = {}
        self.parameter_lines: dict[str, int] = {}
        self.licenses: list[str] = []
        self.messages: list[dict[str, str]] = []
        self.adapters: list[str] = []

    def set_once(self, instruction: str, value: str, line: int) -> None:
        if instruction in self.first_lines:
            first = self.first_lines[instruction]
            raise _error(self.source, line, f"second {instruction} (the first is on line {first})")
        self.first_lines[instruction] = line
        self.fields[instruction] = value

    def add_parameter(self, name: str, value: _Value, line: int) -> None:
        key = name.lower()
        if key in LIST_PARAMETERS:
            existing = self.parameters.setdefault(key, [])
            assert isinstance(existing, list)
            existing.append(value.text)
            return
        if key in self.parameter_lines:
            first = self.parameter_lines[key]
            message = f"PARAMETER {key} is set twice (the first is on line {first})"
            raise _error(self.source, line, message)
        self.parameter_lines[key] = line
        self.parameters[key] = value.text if value.quoted else _typed(value.text)

    def build(self) -> Modelfile:
        if "FROM" not in self.fields:
            raise ModelfileError(f"{self.source}: no FROM instruction; add `FROM <file or model>`")
        return Modelfile(
            from_=self.fields["FROM"],
            from_line=self.first_lines["FROM"],
            template=self.fields.get("TEMPLATE"),
            system=self.fields.get("SYSTEM"),
            parameters=self.parameters,
            licenses=self.licenses,
            messages=self.messages,
            adapters=self.adapters,
        )


def read_modelfile(path: Path) -> Modelfile:
    """Read and parse the Modelfile at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelfileError(f"Modelfile not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ModelfileError(f"cannot read Modelfile {path}: {error}") from None
    return parse_modelfile(text, source=str(path))


def parse_modelfile(text: str, *, source: str = "Modelfile") -> Modelfile:
    """Parse Modelfile `text`; errors name `source` and the 1-based line number."""
    lines = text.splitlines()
    builder = _Builder(source)
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        index = _parse_instruction(lines, index, builder)
    return builder.build()


def _parse_instruction(lines: list[str], index: int, builder: _Builder) -> int:
    """Apply the instruction that starts on `lines[index]` and return the next line index."""
    line_number = index + 1
    match = _INSTRUCTION_LINE.match(lines[index])
    assert match is not None  # the line is not blank
    instruction = match.group(1).upper()
    rest = match.group(2) or ""
    if instruction not in INSTRUCTIONS:
        expected = ", ".join(INSTRUCTIONS)
        message = f"unknown instruction {match.group(1)!r}; expected one of {expected}"
        raise _error(builder.source, line_number, message)

    if instruction == "PARAMETER":
        name, value_text = _split_word(rest)
        if not name or not value_text:
            raise _error(builder.source, line_number, "PARAMETER needs a name and a value")
        value = _parse_value(lines, index, value_text, builder.source)
        builder.add_parameter(name, value, line_number)
        return value.next_index

    if instruction == "MESSAGE":
        role, content_text = _split_word(rest)
        if role.lower() not in MESSAGE_ROLES:
            roles = ", ".join(MESSAGE_ROLES)
            message = f"MESSAGE role must be one of {roles}, got {role or 'nothing'!r}"
            raise _error(builder.source, line_number, message)
        value = _parse_value(lines, index, content_text, builder.source)
        builder.messages.append({"role": role.lower(), "content": value.text})
        return value.next_index

    if not rest.strip():
        raise _error(builder.source, line_number, f"{instruction} needs a value")
    value = _parse_value(lines, index, rest, builder.source)
    if instruction == "LICENSE":
        builder.licenses.append(value.text)
    elif instruction == "ADAPTER":
        builder.adapters.append(value.text)
    else:
        builder.set_once(instruction, value.text, line_number)
    return value.next_index


def _split_word(text: str) -> tuple[str, str]:
    parts = text.strip().split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def _parse_value(lines: list[str], index: int, text: str, source: str) -> _Value:
    """Parse the value that begins with `text` on `lines[index]`."""
    value = text.strip()
    if value.startswith(_TRIPLE_QUOTE):
        return _parse_block(lines, index, text.lstrip()[len(_TRIPLE_QUOTE) :], source)
    if value.startswith('"'):
        return _Value(_parse_quoted(value, index + 1, source), True, index + 1)
    return _Value(value, False, index + 1)


def _parse_block(lines: list[str], index: int, first_part: str, source: str) -> _Value:
    """Collect a triple-quoted block that opened on `lines[index]`, verbatim."""
    pieces: list[str] = []
    current = first_part
    line_index = index
    while True:
        end = current.find(_TRIPLE_QUOTE)
        if end >= 0:
            pieces.append(current[:end])
            trailing = current[end + len(_TRIPLE_QUOTE) :]
            if trailing.strip():
                message = f"unexpected text after the closing triple quote: {trailing.strip()!r}"
                raise _error(source, line_index + 1, message)
            return _Value("\n".join(pieces), True, line_index + 1)
        pieces.append(current)
        line_index += 1
        if line_index >= len(lines):
            raise _error(source, index + 1, "triple-quoted value is never closed")
        current = lines[line_index]


def _parse_quoted(value: str, line_number: int, source: str) -> str:
    """Decode a one-line double-quoted string with backslash escapes."""
    characters: list[str] = []
    position = 1
    while position < len(value):
        character = value[position]
        if character == "\\" and position + 1 < len(value):
            characters.append(value[position + 1])
            position += 2
            continue
        if character == '"':
            trailing = value[position + 1 :].strip()
            if trailing:
                message = f"unexpected text after the closing quote: {trailing!r}"
                raise _error(source, line_number, message)
            return "".join(characters)
        characters.append(character)
        position += 1
    raise _error(source, line_number, "quoted value is never closed on its line")


def _typed(text: str) -> int | float | bool | str:
    if _INTEGER.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _error(source: str, line_number: int, message: str) -> ModelfileError:
    return ModelfileError(f"{source}, line {line_number}: {message}")
