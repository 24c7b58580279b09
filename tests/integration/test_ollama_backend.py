"""OllamaBackend through the real ollama client, against a local Ollama-protocol server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from app.backends.base import ChatMessage, ModelBackend
from app.backends.errors import (
    BackendError,
    BackendResponseError,
    BackendThrottled,
    BackendTimeout,
    BackendUnavailable,
)
from app.backends.ollama import (
    HTTP_TRANSPORTS,
    HTTPX_CLIENT_COUNT,
    HttpTransportName,
    OllamaBackend,
)
from tests.support.fake_ollama import FakeOllama, ScriptedReply, unused_local_url

pytestmark = pytest.mark.anyio

MODEL = "plan-model"
MESSAGES = (
    ChatMessage(role="system", content="Translate the utterance into a Lispress plan."),
    ChatMessage(role="user", content="what do I have today"),
    ChatMessage(role="assistant", content="( Yield :output ( Today ) )"),
    ChatMessage(role="user", content="schedule lunch with Jennifer tomorrow at noon"),
)
PLAN_TODAY = "( Yield :output ( Today ) )"
QUOTED_PLAN = (
    "( Yield :output ( CreateCommitEventWrapper :event ( CreatePreflightEventWrapper "
    ':constraint ( Constraint[Event] :subject ( ?= # ( String " Café \\"Zoë\\" (team) " ) ) ) ) ) )'
)


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as fake:
        yield fake


@pytest.fixture(params=HTTP_TRANSPORTS)
def http_transport(request: pytest.FixtureRequest) -> HttpTransportName:
    """Run each test through both HTTP layers of the ollama client."""
    return request.param


@pytest.fixture
async def backend(
    server: FakeOllama, http_transport: HttpTransportName
) -> AsyncIterator[OllamaBackend]:
    ollama_backend = OllamaBackend(
        host=server.url, model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )
    yield ollama_backend
    await ollama_backend.aclose()


async def test_backend_is_model_backend(backend: OllamaBackend) -> None:
    assert isinstance(backend, ModelBackend)
    assert backend.backend == "ollama"
    assert backend.model_name == MODEL


async def test_complete_maps_logprobs(server: FakeOllama, backend: OllamaBackend) -> None:
    tokens = [("( Yield", -0.01), (" :output", -0.25), (" ( Today", -1.5), (" ) )", -0.003)]
    server.enqueue(ScriptedReply.from_tokens(tokens, prompt_eval_count=42, done_reason="stop"))

    completion = await backend.complete(MESSAGES, max_tokens=64)

    assert completion.text == "( Yield :output ( Today ) )"
    assert completion.token_logprobs == (-0.01, -0.25, -1.5, -0.003)
    assert completion.input_tokens == 42
    assert completion.output_tokens == 4
    assert completion.stop_reason == "stop"


async def test_complete_stop_reason_length(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply(content="( Yield :output", done_reason="length"))

    completion = await backend.complete(MESSAGES, max_tokens=3)

    assert completion.stop_reason == "length"


async def test_complete_request_fields(server: FakeOllama, backend: OllamaBackend) -> None:
    await backend.complete(MESSAGES, max_tokens=77)

    [request] = server.requests_to("/api/chat")
    body = request.body
    assert request.method == "POST"
    assert body["model"] == MODEL
    assert body["stream"] is False
    assert body["logprobs"] is True
    assert body["options"]["temperature"] == 0
    assert body["options"]["num_predict"] == 77
    assert body["messages"] == [
        {"role": message.role, "content": message.content} for message in MESSAGES
    ]


async def test_complete_options_merged(
    server: FakeOllama, http_transport: HttpTransportName
) -> None:
    backend = OllamaBackend(
        host=server.url,
        model_name=MODEL,
        timeout_s=5.0,
        options={"num_ctx": 8192, "temperature": 0.9, "num_predict": 5},
        keep_alive="10m",
        http_transport=http_transport,
    )
    try:
        await backend.complete(MESSAGES, max_tokens=32)
    finally:
        await backend.aclose()

    body = server.requests_to("/api/chat")[0].body
    assert body["options"] == {"num_ctx": 8192, "temperature": 0, "num_predict": 32}
    assert body["keep_alive"] == "10m"


async def test_complete_plan_text_exact(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply(content=QUOTED_PLAN))

    completion = await backend.complete(MESSAGES, max_tokens=128)

    assert completion.text == QUOTED_PLAN
    assert completion.text.encode("utf-8") == QUOTED_PLAN.encode("utf-8")
    assert completion.token_logprobs is not None
    assert len(completion.token_logprobs) == completion.output_tokens


async def test_complete_non_ascii_prompt_sent(server: FakeOllama, backend: OllamaBackend) -> None:
    messages = [ChatMessage(role="user", content='rename "Café" to \\"Zoë\\" (team) 日本')]

    await backend.complete(messages, max_tokens=16)

    body = server.requests_to("/api/chat")[0].body
    assert body["messages"][0]["content"] == 'rename "Café" to \\"Zoë\\" (team) 日本'


async def test_complete_without_logprobs(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply(content="( Yield :output ( Today ) )", omit_logprobs=True))

    completion = await backend.complete(MESSAGES, max_tokens=64)

    assert completion.text == "( Yield :output ( Today ) )"
    assert completion.token_logprobs is None


async def test_complete_timeout(server: FakeOllama, http_transport: HttpTransportName) -> None:
    backend = OllamaBackend(
        host=server.url, model_name=MODEL, timeout_s=0.5, http_transport=http_transport
    )
    server.enqueue(ScriptedReply(delay_s=5.0))

    started = time.perf_counter()
    with pytest.raises(BackendTimeout) as caught:
        await backend.complete(MESSAGES, max_tokens=16)
    elapsed = time.perf_counter() - started
    await backend.aclose()

    assert elapsed < 1.5
    assert "0.5 s" in caught.value.message
    assert MODEL in caught.value.message


async def test_complete_server_error(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply.failure(500, "llama runner process has terminated"))

    with pytest.raises(BackendResponseError) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert "500" in caught.value.message
    assert "llama runner process has terminated" in caught.value.message
    assert server.url in caught.value.message
    assert MODEL in caught.value.message


async def test_complete_model_missing(server: FakeOllama, backend: OllamaBackend) -> None:
    server.remove_model(MODEL)

    with pytest.raises(BackendUnavailable) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert f"model '{MODEL}' not found" in caught.value.message
    assert f"ollama pull {MODEL}" in caught.value.message


async def test_complete_throttled(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply.failure(429, "too many requests"))

    with pytest.raises(BackendThrottled) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert "429" in caught.value.message
    assert "too many requests" in caught.value.message


async def test_complete_bad_request(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply.failure(400, "invalid options"))

    with pytest.raises(BackendResponseError) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert "400" in caught.value.message
    assert "invalid options" in caught.value.message


async def test_complete_connection_refused(http_transport: HttpTransportName) -> None:
    host = unused_local_url()
    backend = OllamaBackend(
        host=host, model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )

    started = time.perf_counter()
    with pytest.raises(BackendUnavailable) as caught:
        await backend.complete(MESSAGES, max_tokens=16)
    elapsed = time.perf_counter() - started
    await backend.aclose()

    assert elapsed < 1.0
    assert host in caught.value.message
    assert MODEL in caught.value.message


async def test_error_message_hides_credentials(http_transport: HttpTransportName) -> None:
    host = unused_local_url().replace("http://", "http://operator:hunter2@")
    backend = OllamaBackend(
        host=host, model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )

    with pytest.raises(BackendUnavailable) as caught:
        await backend.complete(MESSAGES, max_tokens=16)
    await backend.aclose()

    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(backend)
    assert "127.0.0.1" in caught.value.message


@pytest.mark.parametrize(
    ("status", "server_text", "public"),
    [
        (
            500,
            "llama runner process has terminated",
            "The small model returned an error or an invalid response.",
        ),
        (503, "server busy", "The small model is throttled."),
        (404, "model not found", "The small model could not be reached."),
    ],
    ids=["server-error", "busy", "not-found"],
)
async def test_public_message_hides_server(
    server: FakeOllama, backend: OllamaBackend, status: int, server_text: str, public: str
) -> None:
    server.enqueue(ScriptedReply.failure(status, server_text))

    with pytest.raises(BackendError) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert caught.value.public_message("small") == public
    assert server.url in caught.value.message
    assert server_text in caught.value.message


async def test_public_message_connection_refused(http_transport: HttpTransportName) -> None:
    host = unused_local_url()
    backend = OllamaBackend(
        host=host, model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )

    with pytest.raises(BackendUnavailable) as caught:
        await backend.complete(MESSAGES, max_tokens=16)
    await backend.aclose()

    assert caught.value.public_message("small") == "The small model could not be reached."


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "plan-model", "message": {"role": "assist', id="truncated-json"),
        pytest.param(b"<html>Bad Gateway</html>", id="html"),
        pytest.param(b'["not", "an", "object"]', id="json-array"),
        pytest.param(b'{"model": "plan-model", "done": true}', id="missing-message"),
    ],
)
async def test_complete_malformed_body(
    server: FakeOllama, backend: OllamaBackend, body: bytes
) -> None:
    server.enqueue(ScriptedReply.malformed(body))

    with pytest.raises(BackendResponseError) as caught:
        await backend.complete(MESSAGES, max_tokens=16)

    assert "not the expected JSON object" in caught.value.message


NO_RESPONSE = (BackendUnavailable, "closed the connection without a response")
INVALID_RESPONSE = (BackendResponseError, "sent an invalid HTTP response (RemoteProtocolError)")


@pytest.mark.parametrize(
    ("fault", "expected_by_transport"),
    [
        ("close", {"aiohttp": NO_RESPONSE, "httpx": NO_RESPONSE}),
        ("truncated", {"aiohttp": INVALID_RESPONSE, "httpx": INVALID_RESPONSE}),
        # httpcore waits for a whole response head, so bytes that never form one read as
        # no response at all, while aiohttp rejects the first line.
        ("not_http", {"aiohttp": INVALID_RESPONSE, "httpx": NO_RESPONSE}),
    ],
)
async def test_complete_broken_exchange(
    server: FakeOllama,
    backend: OllamaBackend,
    fault: str,
    expected_by_transport: dict[str, tuple[type[BackendError], str]],
) -> None:
    error, expected = expected_by_transport[backend.http_transport]
    server.enqueue(ScriptedReply.broken(fault), ScriptedReply(content=PLAN_TODAY))

    with pytest.raises(BackendError) as caught:
        await backend.complete(MESSAGES, max_tokens=16)
    after = await backend.complete(MESSAGES, max_tokens=16)

    assert type(caught.value) is error
    assert expected in caught.value.message
    assert after.text == PLAN_TODAY


async def test_connections_are_reused(server: FakeOllama, backend: OllamaBackend) -> None:
    for _ in range(10):
        await backend.complete(MESSAGES, max_tokens=16)

    # httpx's own transport takes its clients in turn, each with its own connection.
    connections = {request.client_port for request in server.requests_to("/api/chat")}
    assert len(connections) <= HTTPX_CLIENT_COUNT


async def test_complete_concurrent_requests(server: FakeOllama, backend: OllamaBackend) -> None:
    server.enqueue(ScriptedReply(delay_s=0.5), ScriptedReply(delay_s=0.5))
    texts: list[str] = []

    async def complete_once() -> None:
        completion = await backend.complete(MESSAGES, max_tokens=16)
        texts.append(completion.text)

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(complete_once)
        group.start_soon(complete_once)
    elapsed = time.perf_counter() - started

    assert len(texts) == 2
    assert elapsed < 0.9


async def test_complete_rejects_zero_max_tokens(backend: OllamaBackend) -> None:
    with pytest.raises(ValueError):
        await backend.complete(MESSAGES, max_tokens=0)


async def test_probe_ready(server: FakeOllama, backend: OllamaBackend) -> None:
    status = await backend.probe()

    assert status.ready is True
    assert status.backend == "ollama"
    assert status.model_name == MODEL
    assert status.extra["host"] == server.url
    assert status.extra["family"] == "llama"
    assert server.requests_to("/api/show")[0].body["model"] == MODEL


async def test_probe_model_missing(server: FakeOllama, backend: OllamaBackend) -> None:
    server.remove_model(MODEL)

    status = await backend.probe()

    assert status.ready is False
    assert f"model '{MODEL}' not found" in status.detail
    assert f"ollama pull {MODEL}" in status.detail


async def test_probe_server_down(http_transport: HttpTransportName) -> None:
    backend = OllamaBackend(
        host=unused_local_url(), model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )

    status = await backend.probe()
    await backend.aclose()

    assert status.ready is False
    assert "cannot connect" in status.detail


async def test_probe_after_server_stops(server: FakeOllama, backend: OllamaBackend) -> None:
    ready = await backend.probe()
    server.close()

    stopped = await backend.probe()

    assert ready.ready is True
    assert stopped.ready is False


async def test_probe_accepts_untagged_name(
    server: FakeOllama, http_transport: HttpTransportName
) -> None:
    backend = OllamaBackend(
        host=server.url, model_name=f"{MODEL}:latest", timeout_s=5.0, http_transport=http_transport
    )

    status = await backend.probe()
    await backend.aclose()

    assert status.ready is True


async def test_aclose_twice(backend: OllamaBackend) -> None:
    await backend.aclose()
    await backend.aclose()
