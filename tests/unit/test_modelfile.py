"""parse_modelfile: instructions, quoting, typed parameters and line-numbered errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.modelstore.modelfile import ModelfileError, parse_modelfile, read_modelfile
from tests.conftest import REPO_ROOT

LLAMA_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n"
    "\n"
    "{{ .Content }}<|eot_id|>\n"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n"
    "\n"
)


def test_repository_modelfile_parses() -> None:
    modelfile = read_modelfile(REPO_ROOT / "model" / "Modelfile")

    assert modelfile.from_ == "./artifacts/plan-llama3.1-8b.Q4_K_M.gguf"
    assert modelfile.template == LLAMA_TEMPLATE
    assert modelfile.parameters == {
        "temperature": 0,
        "num_ctx": 8192,
        "stop": ["<|eot_id|>", "<|start_header_id|>"],
    }
    assert modelfile.system is None


def test_repository_modelfile_from_line() -> None:
    text = (REPO_ROOT / "model" / "Modelfile").read_text(encoding="utf-8")
    expected_line = text.splitlines().index("FROM ./artifacts/plan-llama3.1-8b.Q4_K_M.gguf") + 1

    assert read_modelfile(REPO_ROOT / "model" / "Modelfile").from_line == expected_line


def test_parameter_values_are_typed() -> None:
    modelfile = parse_modelfile(
        "FROM base\n"
        "PARAMETER num_ctx 4096\n"
        "PARAMETER temperature 0.7\n"
        "PARAMETER top_p .9\n"
        "PARAMETER repeat_penalty 1e0\n"
        "PARAMETER use_mmap false\n"
        'PARAMETER seed "42"\n'
        "PARAMETER mirostat_tau five\n"
    )

    assert modelfile.parameters["num_ctx"] == 4096
    assert isinstance(modelfile.parameters["num_ctx"], int)
    assert modelfile.parameters["temperature"] == pytest.approx(0.7)
    assert modelfile.parameters["top_p"] == pytest.approx(0.9)
    assert modelfile.parameters["repeat_penalty"] == pytest.approx(1.0)
    assert isinstance(modelfile.parameters["repeat_penalty"], float)
    assert modelfile.parameters["use_mmap"] is False
    assert modelfile.parameters["seed"] == "42"
    assert modelfile.parameters["mirostat_tau"] == "five"


def test_single_stop_is_list() -> None:
    modelfile = parse_modelfile('FROM base\nPARAMETER stop "</s>"\n')

    assert modelfile.parameters["stop"] == ["</s>"]


def test_stop_values_stay_strings() -> None:
    modelfile = parse_modelfile("FROM base\nPARAMETER stop 42\nPARAMETER stop END\n")

    assert modelfile.parameters["stop"] == ["42", "END"]


def test_comments_and_blank_lines_skipped() -> None:
    modelfile = parse_modelfile(
        "# a comment\n\n   # an indented comment\nFROM base\n\n# FROM other\n"
    )

    assert modelfile.from_ == "base"
    assert modelfile.from_line == 4


def test_instructions_case_insensitive() -> None:
    modelfile = parse_modelfile('from base\nsystem "Be brief."\nParameter num_ctx 2048\n')

    assert modelfile.from_ == "base"
    assert modelfile.system == "Be brief."
    assert modelfile.parameters == {"num_ctx": 2048}


def test_quoted_value_escapes() -> None:
    modelfile = parse_modelfile('FROM base\nSYSTEM "Say \\"hi\\" and use a \\\\ here."\n')

    assert modelfile.system == 'Say "hi" and use a \\ here.'


def test_hash_inside_value_kept() -> None:
    modelfile = parse_modelfile("FROM base\nSYSTEM Answer in #plans only.\n")

    assert modelfile.system == "Answer in #plans only."


def test_triple_quoted_on_one_line() -> None:
    modelfile = parse_modelfile('FROM base\nSYSTEM """You write "plans"."""\n')

    assert modelfile.system == 'You write "plans".'


def test_triple_quoted_block_verbatim() -> None:
    modelfile = parse_modelfile(
        'FROM base\nTEMPLATE """  first\n\n# not a comment\n  last\n"""\nPARAMETER num_ctx 1\n'
    )

    assert modelfile.template == "  first\n\n# not a comment\n  last\n"
    assert modelfile.parameters == {"num_ctx": 1}


def test_messages_licenses_adapters() -> None:
    modelfile = parse_modelfile(
        "FROM base\n"
        "MESSAGE user what do I have today\n"
        'MESSAGE assistant """( Yield :output ( Today ) )"""\n'
        'LICENSE "Llama 3.1 Community License"\n'
        'LICENSE """Second\nlicense"""\n'
        "ADAPTER ./lora.gguf\n"
    )

    assert modelfile.messages == [
        {"role": "user", "content": "what do I have today"},
        {"role": "assistant", "content": "( Yield :output ( Today ) )"},
    ]
    assert modelfile.licenses == ["Llama 3.1 Community License", "Second\nlicense"]
    assert modelfile.adapters == ["./lora.gguf"]


def test_crlf_line_endings() -> None:
    modelfile = parse_modelfile("FROM base\r\nPARAMETER num_ctx 512\r\n")

    assert modelfile.from_ == "base"
    assert modelfile.parameters == {"num_ctx": 512}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM base\nRUN make\n", "line 2: unknown instruction 'RUN'"),
        (
            'FROM base\n\nTEMPLATE """open\nstill open\n',
            "line 3: triple-quoted value is never closed",
        ),
        ('FROM base\nSYSTEM "open\n', "line 2: quoted value is never closed"),
        ('FROM base\nSYSTEM "a" b\n', "line 2: unexpected text after the closing quote: 'b'"),
        ('FROM base\nSYSTEM """a\nb""" c\n', "line 3: unexpected text after the closing triple"),
        ("FROM base\nFROM other\n", "line 2: second FROM (the first is on line 1)"),
        ("FROM a\nTEMPLATE x\nTEMPLATE y\n", "line 3: second TEMPLATE (the first is on line 2)"),
        (
            "FROM a\nPARAMETER num_ctx 1\n\nPARAMETER num_ctx 2\n",
            "line 4: PARAMETER num_ctx is set twice (the first is on line 2)",
        ),
        ("FROM a\nPARAMETER num_ctx\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM a\nMESSAGE robot hello\n", "line 2: MESSAGE role must be one of"),
        ("FROM\n", "line 1: FROM needs a value"),
    ],
)
def test_errors_name_line(text: str, expected: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text, source="model/Modelfile")

    assert str(caught.value).startswith("model/Modelfile, ")
    assert expected in str(caught.value)


def test_missing_from_is_error() -> None:
    with pytest.raises(ModelfileError, match="no FROM instruction"):
        parse_modelfile("# only a comment\nPARAMETER num_ctx 1\n")


def test_missing_file_is_error(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError, match="Modelfile not found: .*absent"):
        read_modelfile(tmp_path / "absent")
