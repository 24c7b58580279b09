"""Graceful shutdown: `python -m app` stopped with SIGTERM while a plan request is in flight.

The service runs as a subprocess, as a process manager starts it, with the
small model behind a local Ollama-protocol server whose reply is delayed.
Each scenario runs once per module, and the tests read its outcome.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from tests.support.fake_ollama import FakeOllama, ScriptedReply

MODEL = "plan-model"
PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"
# BANK_ANSWER_SIMILARITY=2 below makes every request reach the model, this one included.
UTTERANCE = "Who is my boss?"
GENERATE_PLAN = "/api/inference/generate-plan"
STARTUP_TIMEOUT_S = 30
MODEL_DELAY_S = 2.0
GRACE_S = 10.0
SHORT_GRACE_S = 1.0
# Time the service may take beyond the grace period: uvicorn 0.55's 0.1 s loop tick, its
# 0.1 s pause before waiting, the lifespan shutdown and the interpreter's exit.
EXIT_MARGIN_S = 3.0

# Every variable the settings read, so that none leaks in from the test's environment.
_SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}


@dataclass
class Service:
    """A running `python -m app` process and where to reach it."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log_events(self) -> list[dict]:
        """Return the JSON log lines written so far; other lines are skipped."""
        events = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def logged(self, text: str) -> bool:
        """Return True once a log message contains `text`."""
        return any(text in str(event.get("message", "")) for event in self.log_events())


@dataclass
class Outcome:
    """The responses, exit status and exit time of one SIGTERM scenario."""

    in_flight: httpx.Response | Exception
    late_request: httpx.Response | Exception
    exit_code: int | None
    exit_s: float  # from SIGTERM to the process's exit
    service: Service


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_environment(port: int, ollama_url: str, grace_s: float) -> dict[str, str]:
    """Build the subprocess environment: the settings under test and nothing else of ours."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in _SETTINGS_VARIABLES and not name.startswith(("OTEL_", "AWS_"))
    }
    return {
        **inherited,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SMALL_MODEL_BACKEND": "ollama",
        "OLLAMA_HOST": ollama_url,
        "LOCAL_MODEL_NAME": MODEL,
        "OLLAMA_TIMEOUT_S": "30",
        "LARGE_MODEL_BACKEND": "none",
        "BANK_ANSWER_SIMILARITY": "2",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_GRACE_S": str(grace_s),
        # python-dotenv would otherwise look for a .env above the app package.
        "PYTHON_DOTENV_DISABLED": "1",
        "OTEL_SDK_DISABLED": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def start_service(workdir: Path, ollama_url: str, grace_s: float) -> Service:
    port = free_port()
    log_path = workdir / "service.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=workdir,  # no .env here: the settings come from the environment alone
            env=service_environment(port, ollama_url, grace_s),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, f"http://127.0.0.1:{port}", log_path)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"service exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{service.url}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, STARTUP_TIMEOUT_S, "the service to become ready")
    return service


def post_plan(url: str, results: list, timeout_s: float = 30) -> None:
    """Post a plan request and append the response, or the exception, to `results`."""
    try:
        results.append(
            httpx.post(f"{url}{GENERATE_PLAN}", json={"utterance": UTTERANCE}, timeout=timeout_s)
        )
    except httpx.HTTPError as error:
        results.append(error)


def run_sigterm_scenario(workdir: Path, ollama: FakeOllama, grace_s: float) -> Outcome:
    """Send SIGTERM while the model generates a plan, then try a new request."""
    service = start_service(workdir, ollama.url, grace_s)
    try:
        chats_before = len(ollama.requests_to("/api/chat"))
        in_flight: list = []
        client = threading.Thread(target=post_plan, args=(service.url, in_flight))
        client.start()
        wait_for(
            lambda: len(ollama.requests_to("/api/chat")) > chats_before,
            10,
            "the plan request to reach the model",
        )

        service.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Uvicorn closes its listening socket right after logging this.
        wait_for(lambda: service.logged("Shutting down"), 5, "the shutdown to begin")
        time.sleep(0.1)
        late: list = []
        post_plan(service.url, late, timeout_s=5)

        exit_code = service.process.wait(timeout=grace_s + MODEL_DELAY_S + EXIT_MARGIN_S + 10)
        exit_s = time.monotonic() - signalled
        client.join(timeout=30)
        return Outcome(in_flight[0], late[0], exit_code, exit_s, service)
    finally:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(timeout=10)


@pytest.fixture(scope="module")
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


@pytest.fixture(scope="module")
def within_grace(ollama, tmp_path_factory) -> Outcome:
    """SIGTERM during a 2 s model reply, with a 10 s grace period."""
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=MODEL_DELAY_S))
    return run_sigterm_scenario(tmp_path_factory.mktemp("within-grace"), ollama, GRACE_S)


@pytest.fixture(scope="module")
def past_grace(ollama, tmp_path_factory) -> Outcome:
    """SIGTERM during a 20 s model reply, with a 1 s grace period."""
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=20))
    return run_sigterm_scenario(tmp_path_factory.mktemp("past-grace"), ollama, SHORT_GRACE_S)


def test_in_flight_request_gets_plan(within_grace):
    response = within_grace.in_flight

    assert isinstance(response, httpx.Response), f"the request failed: {response!r}"
    assert response.status_code == 200
    assert response.json()["plan"] == PLAN


def test_request_after_sigterm_refused(within_grace):
    late = within_grace.late_request

    if isinstance(late, httpx.Response):
        assert late.status_code == 503, late.text
    else:
        assert isinstance(late, httpx.ConnectError), repr(late)


def test_exit_code_zero(within_grace):
    assert within_grace.exit_code == 0, within_grace.service.log_path.read_text()


def test_exit_within_grace(within_grace):
    assert within_grace.exit_s < GRACE_S
    # It waited for the model's reply instead of cutting it off.
    assert within_grace.exit_s > MODEL_DELAY_S / 2


def test_lifespan_shutdown_logged(within_grace):
    assert within_grace.service.logged("service stopped")


def test_overdue_request_gets_503(past_grace):
    response = past_grace.in_flight

    assert isinstance(response, httpx.Response), f"the request failed: {response!r}"
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
    assert "retry" in response.json()["detail"]


def test_overdue_cancel_not_an_app_error(past_grace):
    assert not past_grace.service.logged("Exception in ASGI application")


def test_overdue_exit_prompt(past_grace):
    assert past_grace.exit_s < SHORT_GRACE_S + EXIT_MARGIN_S


def test_overdue_exit_code_zero(past_grace):
    assert past_grace.exit_code == 0, past_grace.service.log_path.read_text()


def test_overdue_lifespan_shutdown_logged(past_grace):
    assert past_grace.service.logged("service stopped")
