"""The circuit breaker in front of the real Ollama client and a local Ollama-protocol server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest

from app.backends.base import ChatMessage
from app.backends.circuit import CircuitBreakerBackend
from app.backends.errors import BackendResponseError, BackendTimeout, BackendUnavailable
from app.backends.ollama import OllamaBackend
from tests.support.fake_ollama import FakeOllama, ScriptedReply, unused_local_url

pytestmark = pytest.mark.anyio

MODEL = "plan-model"
PROMPT = [ChatMessage("user", "Request: who is my boss")]
PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


def breaker(url: str, clock: Clock, timeout_s: float = 5.0) -> CircuitBreakerBackend:
    inner = OllamaBackend(host=url, model_name=MODEL, timeout_s=timeout_s)
    return CircuitBreakerBackend(inner, failure_threshold=2, reset_after_s=10, clock=clock)


async def test_timeouts_open_the_circuit(ollama):
    clock = Clock()
    backend = breaker(ollama.url, clock, timeout_s=0.3)
    for _ in range(2):
        ollama.enqueue(ScriptedReply(content=PLAN, delay_s=2.0))
        with pytest.raises(BackendTimeout):
            await backend.complete(PROMPT, max_tokens=32)

    started = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="circuit open"):
        await backend.complete(PROMPT, max_tokens=32)
    elapsed = time.perf_counter() - started

    assert backend.state == "open"
    assert len(ollama.requests_to("/api/chat")) == 2
    assert elapsed < 0.1  # no request was sent; 0.1 s is far above the bookkeeping
    await backend.aclose()


async def test_open_circuit_public_message():
    backend = breaker(unused_local_url(), Clock())
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await backend.complete(PROMPT, max_tokens=32)

    with pytest.raises(BackendUnavailable) as raised:
        await backend.complete(PROMPT, max_tokens=32)

    assert raised.value.public_message("small") == "The small model could not be reached."
    assert MODEL in raised.value.message
    await backend.aclose()


async def test_trial_call_closes_the_circuit(ollama):
    clock = Clock()
    backend = breaker(unused_local_url(), clock)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await backend.complete(PROMPT, max_tokens=32)
    assert backend.state == "open"

    clock.now += 10
    await backend.inner.aclose()
    backend.inner = OllamaBackend(host=ollama.url, model_name=MODEL, timeout_s=5.0)
    ollama.enqueue(ScriptedReply(content=PLAN))
    completion = await backend.complete(PROMPT, max_tokens=32)

    assert completion.text == PLAN
    assert backend.state == "closed"
    await backend.aclose()


async def test_failed_trial_opens_again():
    clock = Clock()
    backend = breaker(unused_local_url(), clock)
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await backend.complete(PROMPT, max_tokens=32)
    clock.now += 10

    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await backend.complete(PROMPT, max_tokens=32)

    assert backend.state == "open"
    await backend.aclose()


async def test_request_errors_do_not_count(ollama):
    backend = breaker(ollama.url, Clock())
    for _ in range(3):
        ollama.enqueue(ScriptedReply.failure(400, "invalid request"))
        with pytest.raises(BackendResponseError):
            await backend.complete(PROMPT, max_tokens=32)

    assert backend.state == "closed"
    await backend.aclose()


async def test_probe_reports_state(ollama):
    backend = breaker(ollama.url, Clock())

    status = await backend.probe()

    assert status.ready
    assert status.extra["circuit"] == "closed"
    await backend.aclose()


async def test_opening_logged_once(ollama, caplog):
    ollama.enqueue(*(ScriptedReply(delay_s=1.0) for _ in range(4)))
    backend = breaker(ollama.url, Clock(), timeout_s=0.3)

    async def fail_once() -> None:
        with pytest.raises(BackendTimeout):
            await backend.complete(PROMPT, max_tokens=32)

    with caplog.at_level("WARNING", logger="app.backends.circuit"):
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(fail_once)
    await backend.aclose()

    opened = [record for record in caplog.records if record.getMessage().startswith("circuit open")]
    assert backend.state == "open"
    assert len(opened) == 1
