"""`python -m app` with settings or files it cannot use: one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.test_shutdown import free_port, service_environment


def start(tmp_path, **variables: str) -> subprocess.CompletedProcess:
    environment = {**service_environment(free_port(), "", grace_s=5), **variables}
    for name in ("OLLAMA_HOST", "SMALL_MODEL_BACKEND"):
        environment.pop(name)
    environment.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "app"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"REDIS_URL": "garbage"}, "REDIS_URL must start with redis://"),
        ({"EXAMPLES_PATH": "/nonexistent.jsonl"}, "cannot read the file"),
        ({"SMALL_MODEL_BACKEND": "ollama"}, "SMALL_MODEL_BACKEND=ollama needs OLLAMA_HOST"),
        ({"DELEGATION_MIN_SAMPLES": "900"}, "invalid settings: DELEGATION_MIN_SAMPLES must"),
        ({"WORKERS": "0"}, "WORKERS: Input should be greater than or equal to 1"),
    ],
    ids=["redis-url", "bank", "ollama-host", "cross-field", "workers"],
)
def test_bad_setting_is_one_line(tmp_path, variables, message):
    result = start(tmp_path, **variables)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_start_failure_exits_non_zero(tmp_path):
    model = tmp_path / "not-a-model.gguf"
    model.write_text("not a GGUF file")

    result = start(
        tmp_path, WORKERS="2", SMALL_MODEL_BACKEND="llama-cpp", EMBEDDED_MODEL_PATH=str(model)
    )

    assert result.returncode == 1
    assert "a worker failed to start" in result.stderr
