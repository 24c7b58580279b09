"""BedrockBackend through real boto3 and SigV4 signing, against a local Converse server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest

from app.backends.base import ChatMessage, ModelBackend
from app.backends.bedrock import BedrockBackend
from app.backends.errors import (
    BackendError,
    BackendResponseError,
    BackendThrottled,
    BackendTimeout,
    BackendUnavailable,
)
from tests.support.fake_bedrock import (
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    FakeBedrock,
    Reply,
)

pytestmark = pytest.mark.anyio

MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"
ENCODED_MODEL_PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
PROMPT = (ChatMessage(role="user", content="what do I have today"),)
QUOTED_PLAN = (
    "( Yield :output ( CreateCommitEventWrapper :event ( CreatePreflightEventWrapper "
    ":constraint ( Constraint[Event] :subject "
    '( ?= " Déjeuner \\"Zoë\\" [équipe] (ß) 日本 ✓ " ) ) ) ) )'
)


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)


@pytest.fixture
def fake() -> Iterator[FakeBedrock]:
    with FakeBedrock() as server:
        yield server


@pytest.fixture
async def backend(fake: FakeBedrock, credentials: None) -> AsyncIterator[BedrockBackend]:
    bedrock = BedrockBackend(
        MODEL_ID, TEST_REGION, endpoint_url=fake.endpoint_url, timeout_s=10.0, max_attempts=3
    )
    yield bedrock
    await bedrock.aclose()


def make_backend(fake: FakeBedrock, **overrides: object) -> BedrockBackend:
    settings: dict = {"endpoint_url": fake.endpoint_url, "timeout_s": 10.0, "max_attempts": 3}
    settings.update(overrides)
    region = settings.pop("region", TEST_REGION)
    return BedrockBackend(MODEL_ID, region, **settings)


async def warm_up(fake: FakeBedrock, bedrock: BedrockBackend) -> None:
    """Build the boto3 client with one fast call, so timings measure only the calls under test."""
    fake.enqueue(Reply(text="warm"))
    await bedrock.complete(PROMPT, max_tokens=8)


async def test_backend_is_model_backend(backend: BedrockBackend) -> None:
    assert isinstance(backend, ModelBackend)
    assert backend.backend == "bedrock"
    assert backend.model_name == MODEL_ID


async def test_complete_maps_response(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.enqueue(Reply(text="( Yield :output ( Today ) )", input_tokens=42, output_tokens=9))

    completion = await backend.complete(PROMPT, max_tokens=64)

    assert completion.text == "( Yield :output ( Today ) )"
    assert completion.input_tokens == 42
    assert completion.output_tokens == 9
    assert completion.stop_reason == "end_turn"
    assert completion.token_logprobs is None


async def test_complete_stop_reason_max_tokens(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.enqueue(Reply(text="( Yield :output", stop_reason="max_tokens"))

    completion = await backend.complete(PROMPT, max_tokens=3)

    assert completion.stop_reason == "max_tokens"


async def test_request_body_converse_shape(fake: FakeBedrock, backend: BedrockBackend) -> None:
    messages = [
        ChatMessage(role="system", content="Translate the utterance into a Lispress plan."),
        ChatMessage(role="user", content="what do I have today"),
        ChatMessage(role="assistant", content="( Yield :output ( Today ) )"),
        ChatMessage(role="system", content="Answer with one plan."),
        ChatMessage(role="user", content="Context: I met Jennifer yesterday."),
        ChatMessage(role="user", content="schedule lunch with her tomorrow"),
        ChatMessage(role="assistant", content="   "),
    ]

    await backend.complete(messages, max_tokens=256)

    [request] = fake.requests
    assert request.path == ENCODED_MODEL_PATH
    assert request.model_id == MODEL_ID
    assert request.json["system"] == [
        {"text": "Translate the utterance into a Lispress plan."},
        {"text": "Answer with one plan."},
    ]
    assert request.json["messages"] == [
        {"role": "user", "content": [{"text": "what do I have today"}]},
        {"role": "assistant", "content": [{"text": "( Yield :output ( Today ) )"}]},
        {
            "role": "user",
            "content": [
                {"text": "Context: I met Jennifer yesterday."},
                {"text": "schedule lunch with her tomorrow"},
            ],
        },
    ]
    assert request.json["inferenceConfig"] == {"maxTokens": 256, "temperature": 0}


async def test_request_signed_for_bedrock(fake: FakeBedrock, backend: BedrockBackend) -> None:
    await backend.complete(PROMPT, max_tokens=8)

    [request] = fake.requests
    assert request.auth_error is None
    assert f"/{TEST_REGION}/bedrock/aws4_request" in request.headers["authorization"]
    assert TEST_SECRET_ACCESS_KEY not in json.dumps(request.headers)


async def test_plan_text_survives_byte_exact(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.enqueue(Reply(text=QUOTED_PLAN))
    prompt = [ChatMessage(role="user", content=QUOTED_PLAN)]

    completion = await backend.complete(prompt, max_tokens=128)

    assert completion.text == QUOTED_PLAN
    assert completion.text.encode("utf-8") == QUOTED_PLAN.encode("utf-8")
    assert fake.requests[0].json["messages"][0]["content"][0]["text"] == QUOTED_PLAN


async def test_prompt_starting_with_assistant_rejected(
    fake: FakeBedrock, backend: BedrockBackend
) -> None:
    prompt = [
        ChatMessage(role="system", content="Translate."),
        ChatMessage(role="assistant", content="( Yield :output ( Today ) )"),
        ChatMessage(role="user", content="what do I have today"),
    ]

    with pytest.raises(ValueError, match="start with a user message"):
        await backend.complete(prompt, max_tokens=8)

    assert fake.requests == []


async def test_prompt_without_user_rejected(fake: FakeBedrock, backend: BedrockBackend) -> None:
    with pytest.raises(ValueError, match="no non-blank user message"):
        await backend.complete([ChatMessage(role="system", content="Translate.")], max_tokens=8)

    assert fake.requests == []


async def test_bad_secret_rejected(fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-the-server-expects")
    fake.enqueue(Reply(text="never sent"))
    bedrock = make_backend(fake)

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert "InvalidSignatureException" in raised.value.message
    assert fake.requests[0].auth_error.startswith("InvalidSignatureException")
    assert fake.pending_replies == 1


async def test_wrong_region_rejected(fake: FakeBedrock, credentials: None) -> None:
    bedrock = make_backend(fake, region="eu-west-1")

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert "InvalidSignatureException" in raised.value.message
    assert "eu-west-1" in fake.requests[0].auth_error


def test_fake_rejects_unsigned_request(fake: FakeBedrock) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    request = urllib.request.Request(
        fake.endpoint_url + ENCODED_MODEL_PATH, data=body, method="POST"
    )

    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=5)

    assert raised.value.code == 403
    assert raised.value.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"


async def test_throttle_once_retried(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.enqueue(Reply.error("ThrottlingException", "Too many requests"), Reply(text="( Today )"))

    completion = await backend.complete(PROMPT, max_tokens=8)

    assert completion.text == "( Today )"
    assert len(fake.requests) == 2


async def test_persistent_throttle_raises_throttled(
    fake: FakeBedrock, backend: BedrockBackend
) -> None:
    fake.default_reply = Reply.error("ThrottlingException", "Too many requests")

    with pytest.raises(BackendThrottled) as raised:
        await backend.complete(PROMPT, max_tokens=8)

    assert "ThrottlingException" in raised.value.message
    assert MODEL_ID in raised.value.message
    assert len(fake.requests) == 3


async def test_server_error_exhausts_attempts(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.default_reply = Reply.error("InternalServerException", "internal failure")

    with pytest.raises(BackendResponseError) as raised:
        await backend.complete(PROMPT, max_tokens=8)

    assert "InternalServerException" in raised.value.message
    assert "HTTP 500" in raised.value.message
    assert len(fake.requests) == 3


async def test_single_attempt_not_retried(fake: FakeBedrock, credentials: None) -> None:
    fake.default_reply = Reply.error("InternalServerException")
    bedrock = make_backend(fake, max_attempts=1)

    with pytest.raises(BackendResponseError):
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDeniedException", BackendUnavailable),
        ("ResourceNotFoundException", BackendUnavailable),
        ("ServiceUnavailableException", BackendUnavailable),
        ("ModelNotReadyException", BackendUnavailable),
        ("ServiceQuotaExceededException", BackendThrottled),
        ("ModelTimeoutException", BackendTimeout),
        ("ValidationException", BackendResponseError),
        ("ModelErrorException", BackendResponseError),
        ("InternalServerException", BackendResponseError),
        ("SomeFutureException", BackendResponseError),
    ],
)
async def test_error_code_translated(
    fake: FakeBedrock, credentials: None, code: str, expected: type[BackendError]
) -> None:
    fake.enqueue(Reply.error(code, f"scripted {code}"))
    bedrock = make_backend(fake, max_attempts=1)

    with pytest.raises(BackendError) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert type(raised.value) is expected
    assert code in raised.value.message
    assert MODEL_ID in raised.value.message
    assert f"scripted {code}" in raised.value.message


@pytest.mark.parametrize(
    ("code", "public"),
    [
        ("AccessDeniedException", "The large model could not be reached."),
        ("ResourceNotFoundException", "The large model could not be reached."),
        ("ThrottlingException", "The large model is throttled."),
        ("ModelTimeoutException", "The large model timed out."),
        ("ValidationException", "The large model returned an error or an invalid response."),
    ],
)
async def test_public_message_hides_model(
    fake: FakeBedrock, credentials: None, code: str, public: str
) -> None:
    fake.enqueue(Reply.error(code, f"scripted {code}"))
    bedrock = make_backend(fake, max_attempts=1)

    with pytest.raises(BackendError) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert raised.value.public_message("large") == public
    assert MODEL_ID in raised.value.message
    assert TEST_REGION in raised.value.message


async def test_public_message_hides_credential_advice(fake: FakeBedrock) -> None:
    bedrock = make_backend(fake)

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert raised.value.public_message("large") == "The large model could not be reached."
    assert "AWS_ACCESS_KEY_ID" in raised.value.message


async def test_access_denied_names_region(fake: FakeBedrock, credentials: None) -> None:
    fake.enqueue(Reply.error("AccessDeniedException", "You don't have access to the model"))
    bedrock = make_backend(fake, max_attempts=1)

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert TEST_REGION in raised.value.message
    assert "bedrock:InvokeModel" in raised.value.message


async def test_slow_server_times_out(fake: FakeBedrock, credentials: None) -> None:
    bedrock = make_backend(fake, timeout_s=0.5, max_attempts=3)
    await warm_up(fake, bedrock)
    fake.enqueue(Reply(text="too late", delay_s=3.0))

    started = time.monotonic()
    with pytest.raises(BackendTimeout) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.45
    assert elapsed < 1.0
    assert MODEL_ID in raised.value.message
    # The abandoned worker must not retry: wait past its read timeout and first backoff.
    await asyncio.sleep(1.0)
    await bedrock.aclose()
    assert len(fake.requests) == 2


async def test_missing_credentials_unavailable(fake: FakeBedrock) -> None:
    bedrock = make_backend(fake)

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    status = await bedrock.probe()
    await bedrock.aclose()

    assert "no AWS credentials found" in raised.value.message
    assert "AWS_ACCESS_KEY_ID" in raised.value.message
    assert fake.requests == []
    assert status.ready is False
    assert "AWS_PROFILE" in status.detail


async def test_partial_credentials_unavailable(
    fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    bedrock = make_backend(fake)

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert "AWS_SECRET_ACCESS_KEY" in raised.value.message


async def test_credentials_found_after_missing(
    fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    bedrock = make_backend(fake)
    with pytest.raises(BackendUnavailable):
        await bedrock.complete(PROMPT, max_tokens=8)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)

    completion = await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert completion.text == fake.default_reply.text


async def test_probe_ready_with_credentials(backend: BedrockBackend) -> None:
    status = await backend.probe()

    assert status.ready is True
    assert status.backend == "bedrock"
    assert status.model_name == MODEL_ID
    assert TEST_REGION in status.detail
    assert MODEL_ID in status.detail
    assert status.extra["credential_source"] == "env"
    assert TEST_SECRET_ACCESS_KEY not in repr(status)


async def test_probe_sends_no_request(fake: FakeBedrock, backend: BedrockBackend) -> None:
    await backend.probe()

    assert fake.requests == []


async def test_connection_refused_unavailable(credentials: None) -> None:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    bedrock = BedrockBackend(
        MODEL_ID, TEST_REGION, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1
    )

    with pytest.raises(BackendUnavailable) as raised:
        await bedrock.complete(PROMPT, max_tokens=8)
    await bedrock.aclose()

    assert f"127.0.0.1:{port}" in raised.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"output": {"message": {"role": "assistant", "content": [{"text": "( Yie',
        b'{"stopReason": "end_turn", "usage": {"inputTokens": 3, "outputTokens": 0}}',
        b'{"output": "not an object"}',
        b'{"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "end_turn"}',
        b"<html>Bad gateway</html>",
    ],
    ids=["truncated", "no-output", "output-string", "no-text", "html"],
)
async def test_malformed_response_rejected(
    fake: FakeBedrock, backend: BedrockBackend, body: bytes
) -> None:
    fake.enqueue(Reply.raw(body))

    with pytest.raises(BackendResponseError) as raised:
        await backend.complete(PROMPT, max_tokens=8)

    assert MODEL_ID in raised.value.message


async def test_concurrent_calls_overlap(fake: FakeBedrock, backend: BedrockBackend) -> None:
    await warm_up(fake, backend)
    fake.enqueue(Reply(text="first", delay_s=0.5), Reply(text="second", delay_s=0.5))

    started = time.monotonic()
    first, second = await asyncio.gather(
        backend.complete(PROMPT, max_tokens=8), backend.complete(PROMPT, max_tokens=8)
    )
    elapsed = time.monotonic() - started

    assert {first.text, second.text} == {"first", "second"}
    assert elapsed < 0.9


async def test_event_loop_ticks_during_call(fake: FakeBedrock, backend: BedrockBackend) -> None:
    fake.enqueue(Reply(text="slow", delay_s=0.5))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await backend.complete(PROMPT, max_tokens=8)
    ticker.cancel()

    # About 50 ticks fit in 0.5 s; a blocked loop would manage at most one or two.
    assert ticks >= 20


async def test_closed_backend_unavailable(fake: FakeBedrock, credentials: None) -> None:
    bedrock = make_backend(fake)
    await bedrock.aclose()

    with pytest.raises(BackendUnavailable, match="closed"):
        await bedrock.complete(PROMPT, max_tokens=8)
    status = await bedrock.probe()

    assert status.ready is False


async def test_close_during_call_unavailable(fake: FakeBedrock, credentials: None) -> None:
    bedrock = make_backend(fake, max_concurrency=1)
    await warm_up(fake, bedrock)
    fake.enqueue(Reply(text="slow", delay_s=0.5), Reply(text="queued"))
    running = asyncio.create_task(bedrock.complete(PROMPT, max_tokens=8))
    queued = asyncio.create_task(bedrock.complete(PROMPT, max_tokens=8))
    await asyncio.sleep(0.1)

    await bedrock.aclose()

    with pytest.raises(BackendUnavailable):
        await queued
    assert (await running).text == "slow"
