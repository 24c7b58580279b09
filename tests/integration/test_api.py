"""The HTTP API through the real Ollama client against a local Ollama-protocol server."""

from __future__ import annotations

import gc
import math
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.api.schemas import CONTEXT_MAX_TURNS, UTTERANCE_MAX_CHARS
from app.core.config import DEFAULT_EXAMPLES_PATH, Settings
from app.core.garbage_collection import YOUNG_GENERATION_THRESHOLD
from app.domain.example_bank import load_bank
from app.main import create_app
from tests.support.fake_bedrock import (
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    FakeBedrock,
    Reply,
)
from tests.support.fake_ollama import FakeOllama, ScriptedReply, unused_local_url

MODEL = "plan-model"
PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


def make_settings(ollama_url: str, **overrides) -> Settings:
    values = dict(
        small_model_backend="ollama",
        ollama_host=ollama_url,
        local_model_name=MODEL,
        ollama_timeout_s=2.0,
        large_model_backend="none",
        log_format="text",
        # The test utterances are in the default bank: ask the model all the same.
        bank_answer_similarity=2.0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def warning_line(capfd: pytest.CaptureFixture[str], request_id: str, event: str) -> str:
    """Return the WARNING log line of `event` logged under `request_id`, or "" when none was.

    Reads and clears what the test has written to stderr, so call it once per test.
    """
    for line in capfd.readouterr().err.splitlines():
        if " WARNING " in line and f"[{request_id}] {event}" in line:
            return line
    return ""


def plan_unavailable_log(capfd: pytest.CaptureFixture[str], request_id: str) -> str:
    return warning_line(capfd, request_id, "plan unavailable")


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


@pytest.fixture
def client(ollama) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(ollama.url))) as test_client:
        yield test_client


@pytest.fixture
def unbudgeted_client(ollama) -> Iterator[TestClient]:
    """A client of a service whose delegation budget admits the very first request."""
    settings = make_settings(ollama.url, delegation_max_ratio=1.0)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_plan_from_small_model(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.9)))

    response = client.post("/api/inference/generate-plan", json={"utterance": "Who is my boss?"})

    body = response.json()
    assert response.status_code == 200
    assert body["plan"] == PLAN
    assert body["model"] == "small"
    assert body["backend"] == "ollama"
    assert body["model_name"] == MODEL
    assert body["confidence"] == pytest.approx(0.9, abs=1e-4)
    assert body["confidence_source"] == "logprobs"
    assert body["delegated"] is False
    assert body["delegation"]["status"] == "not_wanted"
    assert body["delegation"]["reason"] == "above_threshold"
    assert body["request_id"] == response.headers["x-request-id"]


def test_prompt_has_few_shot_examples(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))

    body = client.post(
        "/api/inference/generate-plan", json={"utterance": "Who is my manager?"}
    ).json()

    sent = ollama.requests_to("/api/chat")[0].body["messages"]
    nearest = next(e for e in load_bank(DEFAULT_EXAMPLES_PATH) if e.id == body["few_shot"][0]["id"])
    assert sent[0]["role"] == "system"
    assert len(sent) == 2 + 2 * len(body["few_shot"])
    assert sent[-2] == {"role": "assistant", "content": nearest.plan}
    assert sent[-1]["content"].endswith("Request: Who is my manager?")


def test_context_reaches_prompt(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))
    context = [{"utterance": "Book lunch tomorrow", "plan": PLAN, "agent_reply": "Done."}]

    client.post(
        "/api/inference/generate-plan", json={"utterance": "Make it 1pm", "context": context}
    )

    last = ollama.requests_to("/api/chat")[0].body["messages"][-1]["content"]
    assert last.startswith("Previous request: Book lunch tomorrow\n")
    assert "Assistant replied: Done." in last


def test_wrapped_output_is_normalized(client, ollama):
    ollama.enqueue(ScriptedReply(content=f"Sure! Here is the plan:\n```\n{PLAN}\n```"))

    body = client.post("/api/inference/generate-plan", json={"utterance": "my boss?"}).json()

    assert body["plan"] == PLAN


def test_no_logprobs_falls_back_to_retrieval(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN, omit_logprobs=True))

    body = client.post(
        "/api/inference/generate-plan", json={"utterance": "Who is my manager?"}
    ).json()

    assert body["confidence_source"] == "retrieval"
    assert body["confidence"] == pytest.approx(body["few_shot"][0]["similarity"])


def test_request_id_is_echoed(client, ollama):
    response = client.post(
        "/api/inference/generate-plan",
        json={"utterance": "Who is my manager?"},
        headers={"X-Request-ID": "trace-42"},
    )

    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"


@pytest.mark.parametrize(
    "payload, field, words",
    [
        ({}, "utterance", "Field required"),
        ({"utterance": ""}, "utterance", "at least 1 character"),
        ({"utterance": "   "}, "utterance", "letter or digit"),
        ({"utterance": "\u200b\u200b"}, "utterance", "letter or digit"),
        ({"utterance": 42}, "utterance", "valid string"),
        ({"utterance": "x" * (UTTERANCE_MAX_CHARS + 1)}, "utterance", f"{UTTERANCE_MAX_CHARS}"),
        ({"utterance": "hi", "mood": "happy"}, "mood", "Unknown field"),
        (
            {"utterance": "hi", "context": [{"utterance": "a"}] * (CONTEXT_MAX_TURNS + 1)},
            "context",
            f"{CONTEXT_MAX_TURNS}",
        ),
        ({"utterance": "hi", "context": [{"plan": "( A )"}]}, "context[0].utterance", "required"),
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "invisible",
        "number",
        "too-long",
        "extra",
        "context-long",
        "turn",
    ],
)
def test_invalid_request_names_field(client, payload, field, words):
    response = client.post("/api/inference/generate-plan", json=payload)

    body = response.json()
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert body["errors"][0]["field"] == field
    assert words in body["errors"][0]["message"]
    assert body["request_id"]


def test_non_json_body_is_400(client):
    response = client.post(
        "/api/inference/generate-plan",
        content=b"utterance=hello",
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]


def test_ollama_down_is_503(ollama):
    with TestClient(create_app(make_settings(unused_local_url()))) as client:
        response = client.post(
            "/api/inference/generate-plan", json={"utterance": "Who is my boss?"}
        )

    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "The small model could not be reached." in response.json()["detail"]
    assert "Traceback" not in response.text


def test_ollama_timeout_is_504(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=5))

    response = client.post("/api/inference/generate-plan", json={"utterance": "Who is my boss?"})

    assert response.status_code == 504
    assert "The small model timed out." in response.json()["detail"]


def test_ollama_server_error_is_502(client, ollama):
    ollama.enqueue(ScriptedReply.failure(500, "llama runner process has terminated"))

    response = client.post("/api/inference/generate-plan", json={"utterance": "Who is my boss?"})

    detail = response.json()["detail"]
    assert response.status_code == 502
    assert "The small model returned an error or an invalid response." in detail
    assert "llama runner process has terminated" not in detail


def test_ollama_gone_mid_request_is_503(ollama):
    ollama.enqueue(ScriptedReply.broken("close"))

    with TestClient(create_app(make_settings(ollama.url))) as client:
        response = client.post("/api/inference/generate-plan", json={"utterance": UNMATCHED})

    assert response.status_code == 503
    assert "The small model could not be reached." in response.json()["detail"]
    assert "retry-after" in response.headers


def test_503_body_hides_ollama_url(capfd):
    url = unused_local_url()
    port = url.rsplit(":", 1)[1]

    with TestClient(create_app(make_settings(url))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who is my boss?"},
            headers={"X-Request-ID": "down-503"},
        )

    logged = plan_unavailable_log(capfd, "down-503")
    assert response.status_code == 503
    assert "http://" not in response.text
    assert "127.0.0.1" not in response.text
    assert port not in response.text
    assert "request id" in response.json()["detail"]
    assert url in logged
    assert "status=503" in logged


def test_504_body_hides_ollama_url(ollama, capfd):
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=2))
    port = ollama.url.rsplit(":", 1)[1]

    with TestClient(create_app(make_settings(ollama.url, ollama_timeout_s=0.5))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who is my boss?"},
            headers={"X-Request-ID": "slow-504"},
        )

    logged = plan_unavailable_log(capfd, "slow-504")
    assert response.status_code == 504
    assert "http://" not in response.text
    assert "127.0.0.1" not in response.text
    assert port not in response.text
    assert ollama.url in logged
    assert "did not answer within 0.5 s" in logged


def test_502_body_hides_upstream_text(ollama, capfd):
    ollama.enqueue(ScriptedReply.failure(500, "llama runner process has terminated"))
    port = ollama.url.rsplit(":", 1)[1]

    # The app starts inside the test, so that its log handler writes where capfd reads.
    with TestClient(create_app(make_settings(ollama.url))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who is my boss?"},
            headers={"X-Request-ID": "broken-502"},
        )

    logged = plan_unavailable_log(capfd, "broken-502")
    assert response.status_code == 502
    assert "llama runner" not in response.text
    assert "http://" not in response.text
    assert port not in response.text
    assert "llama runner process has terminated" in logged
    assert ollama.url in logged


# Shares no word with any example of the default bank, so no example's plan can stand in.
UNMATCHED = "Xyzzy plugh?"
BOSS_PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"


def test_unusable_small_output_falls_back_to_nearest_example(unbudgeted_client, ollama):
    ollama.enqueue(ScriptedReply(content="I am sorry, I cannot do that."))

    body = unbudgeted_client.post(
        "/api/inference/generate-plan", json={"utterance": "Who is my boss?"}
    ).json()

    assert body["plan"] == BOSS_PLAN
    assert body["origin"] == "nearest_example"
    assert body["origin_example_id"] == "people-my-manager"
    assert body["confidence"] == 0.0
    assert body["confidence_source"] == "invalid_plan"
    assert body["delegation"]["reason"] == "invalid_plan"
    assert body["generated_plan_problem"]  # why no plan could be read from the output


def test_unusable_output_unmatched_is_502(client, ollama):
    ollama.enqueue(ScriptedReply(content="I am sorry, I cannot do that."))

    response = client.post("/api/inference/generate-plan", json={"utterance": UNMATCHED})

    assert response.status_code == 502
    assert "The small model returned no usable plan." in response.json()["detail"]


def test_low_confidence_without_large_model_returns_small_plan(ollama):
    settings = make_settings(ollama.url, delegation_max_ratio=1.0, delegation_warmup_threshold=0.5)
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))

    with TestClient(create_app(settings)) as client:
        body = client.post("/api/inference/generate-plan", json={"utterance": "boss?"}).json()

    assert body["plan"] == PLAN
    assert body["delegation"]["wanted"] is True
    assert body["delegation"]["status"] == "unavailable"
    assert body["delegation"]["error"] == "No large model is configured."
    assert body["delegated"] is False


def test_health_is_ok(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_reports_backends(client):
    response = client.get("/ready")

    body = response.json()
    assert response.status_code == 200
    assert body["ready"] is True
    assert body["backends"][0]["backend"] == "ollama"
    assert body["examples"] > 0


def test_ready_is_503_when_model_missing(client, ollama):
    ollama.remove_model(MODEL)

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.json()["backends"][0]["ready"] is False


def test_openapi_documents_limits(client):
    schema = client.get("/openapi.json").json()

    request = schema["components"]["schemas"]["PlanRequest"]
    assert request["properties"]["utterance"]["maxLength"] == UTTERANCE_MAX_CHARS
    assert request["properties"]["context"]["maxItems"] == CONTEXT_MAX_TURNS
    assert "examples" in schema["components"]["schemas"]["PlanResponse"]["properties"]["plan"]


def test_unknown_route_is_problem_json(client):
    response = client.get("/nope")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


# --- With the large model: the real boto3 client against a local Converse server ---

LARGE_PLAN = "( Yield :output ( FindReports :recipient ( toRecipient ( CurrentUser ) ) ) )"
BEDROCK_MODEL_ID = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@pytest.fixture
def bedrock(monkeypatch) -> Iterator[FakeBedrock]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
    with FakeBedrock(default_reply=Reply(text=LARGE_PLAN)) as server:
        yield server


def with_large(ollama_url: str, bedrock_server: FakeBedrock, **overrides) -> Settings:
    values = dict(
        large_model_backend="bedrock",
        bedrock_endpoint_url=bedrock_server.endpoint_url,
        bedrock_region=TEST_REGION,
        bedrock_model_id=BEDROCK_MODEL_ID,
        bedrock_max_attempts=1,
        bedrock_timeout_s=2.0,
        # Delegate any confidence at or below 0.5 from the first request on.
        delegation_max_ratio=1.0,
        delegation_warmup_threshold=0.5,
    )
    values.update(overrides)
    return make_settings(ollama_url, **values)


def ask(settings: Settings, utterance: str = "Who reports to me?"):
    with TestClient(create_app(settings)) as client:
        return client.post("/api/inference/generate-plan", json={"utterance": utterance})


def test_low_confidence_is_delegated(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))

    body = ask(with_large(ollama.url, bedrock)).json()

    converse = bedrock.requests[0].json
    assert body["plan"] == LARGE_PLAN
    assert body["model"] == "large"
    assert body["backend"] == "bedrock"
    assert body["delegated"] is True
    assert body["delegation"]["reason"] == "low_confidence"
    assert body["delegation"]["status"] == "completed"
    assert body["small_plan"] == PLAN
    assert body["confidence"] == pytest.approx(0.2, abs=1e-4)
    assert converse["messages"][-1]["content"][0]["text"].endswith("Request: Who reports to me?")
    assert "SMCalFlow" in converse["system"][0]["text"]


def test_confident_answer_skips_large_model(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.95)))

    body = ask(with_large(ollama.url, bedrock)).json()

    assert body["model"] == "small"
    assert bedrock.requests == []


def test_invalid_small_plan_goes_to_large(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content="( Yield :output ( FindReports", default_logprob=-0.01))

    body = ask(with_large(ollama.url, bedrock, delegation_max_ratio=1.0)).json()

    assert body["plan"] == LARGE_PLAN
    assert body["confidence"] == 0.0
    assert body["confidence_source"] == "invalid_plan"
    assert body["delegation"]["reason"] == "invalid_plan"


def test_throttled_large_returns_small_plan(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))
    bedrock.enqueue(Reply.error("ThrottlingException", "Too many requests"))

    response = ask(with_large(ollama.url, bedrock))

    body = response.json()
    assert response.status_code == 200
    assert body["plan"] == PLAN
    assert body["model"] == "small"
    assert body["delegation"]["wanted"] is True
    assert body["delegation"]["status"] == "unavailable"
    assert body["delegation"]["error"] == "The large model is throttled."


def test_large_error_returns_small_plan(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))
    bedrock.enqueue(Reply.error("ModelErrorException", "The model failed"))

    body = ask(with_large(ollama.url, bedrock)).json()

    assert body["plan"] == PLAN
    assert body["delegation"]["status"] == "failed"


def test_large_without_plan_returns_small_plan(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))
    bedrock.enqueue(Reply(text="I would rather not answer that."))

    body = ask(with_large(ollama.url, bedrock)).json()

    assert body["plan"] == PLAN
    assert body["delegation"]["status"] == "failed"
    assert body["delegation"]["error"] == "The large model returned no usable plan."


def test_no_aws_credentials_returns_small_plan(ollama, bedrock, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))

    body = ask(with_large(ollama.url, bedrock)).json()

    assert body["plan"] == PLAN
    assert body["delegation"]["wanted"] is True
    assert body["delegation"]["status"] == "unavailable"
    assert body["delegation"]["error"] == "The large model could not be reached."
    assert bedrock.requests == []


def test_small_down_large_answers(bedrock):
    body = ask(with_large(unused_local_url(), bedrock)).json()

    assert body["plan"] == LARGE_PLAN
    assert body["model"] == "large"
    assert body["fallback"] == "small_model_failed"
    assert body["confidence"] is None
    assert body["delegation"]["reason"] is None


def test_both_down_is_503(bedrock):
    bedrock.enqueue(Reply.error("ServiceUnavailableException", "Bedrock is down"))

    response = ask(with_large(unused_local_url(), bedrock))

    detail = response.json()["detail"]
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "The small model could not be reached." in detail
    assert "The large model could not be reached." in detail


def test_503_body_hides_bedrock_config(bedrock, capfd):
    bedrock.enqueue(Reply.error("ServiceUnavailableException", "Bedrock is down"))

    with TestClient(create_app(with_large(unused_local_url(), bedrock))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who reports to me?"},
            headers={"X-Request-ID": "both-down"},
        )

    logged = plan_unavailable_log(capfd, "both-down")
    assert response.status_code == 503
    assert BEDROCK_MODEL_ID not in response.text
    assert "claude" not in response.text
    assert TEST_REGION not in response.text
    assert "Bedrock is down" not in response.text
    assert "http://" not in response.text
    assert BEDROCK_MODEL_ID in logged
    assert TEST_REGION in logged
    assert "Bedrock is down" in logged


def test_delegation_error_hides_bedrock_config(ollama, bedrock, capfd):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))
    bedrock.enqueue(Reply.error("AccessDeniedException", "You don't have access to the model"))

    with TestClient(create_app(with_large(ollama.url, bedrock))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who reports to me?"},
            headers={"X-Request-ID": "denied"},
        )

    error = response.json()["delegation"]["error"]
    logged = warning_line(capfd, "denied", "large model failed")
    assert response.status_code == 200
    assert error == "The large model could not be reached."
    assert BEDROCK_MODEL_ID in logged
    assert TEST_REGION in logged
    assert "bedrock:InvokeModel" in logged


def test_ready_lists_large_backend(ollama, bedrock):
    with TestClient(create_app(with_large(ollama.url, bedrock))) as client:
        body = client.get("/ready").json()

    assert [backend["role"] for backend in body["backends"]] == ["small", "large"]
    assert body["backends"][1]["ready"] is True


def test_small_timeout_and_large_down_is_504(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=5))
    bedrock.enqueue(Reply.error("ServiceUnavailableException", "Bedrock is down"))

    response = ask(with_large(ollama.url, bedrock))

    assert response.status_code == 504
    assert "retry-after" not in response.headers


def test_cut_off_plan_logs_token_limit(ollama, capfd):
    ollama.enqueue(
        ScriptedReply(content="( Yield :output ( FindManager ( ( (", done_reason="length")
    )

    with TestClient(create_app(make_settings(ollama.url))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": UNMATCHED},
            headers={"X-Request-ID": "cut-off"},
        )

    assert response.status_code == 502
    assert "The small model returned no usable plan." in response.json()["detail"]
    assert "generation stopped at its token limit" in plan_unavailable_log(capfd, "cut-off")


def test_service_tunes_garbage_collector(ollama):
    with TestClient(create_app(make_settings(ollama.url))):
        threshold = gc.get_threshold()[0]
        frozen = gc.get_freeze_count()

    assert threshold == YOUNG_GENERATION_THRESHOLD
    assert frozen > 0
    assert gc.get_freeze_count() == 0


def stderr_lines_of(capfd: pytest.CaptureFixture[str], request_id: str) -> list[str]:
    """Return the text-format log lines written under `request_id`."""
    return [line for line in capfd.readouterr().err.splitlines() if f"[{request_id}]" in line]


def test_request_logs_one_line(ollama, capfd):
    ollama.enqueue(ScriptedReply(content=PLAN))

    with TestClient(create_app(make_settings(ollama.url, log_level="INFO"))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": UNMATCHED},
            headers={"X-Request-ID": "one-line"},
        )

    assert response.status_code == 200
    lines = stderr_lines_of(capfd, "one-line")
    assert len(lines) == 1, lines
    assert " INFO app.access [one-line] request method=POST" in lines[0]


def test_debug_log_leaves_out_http_client_lines(ollama, bedrock, capfd):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.2)))

    with TestClient(create_app(with_large(ollama.url, bedrock, log_level="DEBUG"))) as client:
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who reports to me?"},
            headers={"X-Request-ID": "quiet-clients"},
        )

    assert response.json()["delegated"] is True
    lines = stderr_lines_of(capfd, "quiet-clients")
    # The text format is "date time LEVEL logger [request id] message".
    loggers = {line.split()[3].split(".")[0] for line in lines}
    assert "app" in loggers
    assert not loggers & {"httpx", "httpcore", "botocore", "urllib3"}, lines
    assert TEST_SECRET_ACCESS_KEY not in "\n".join(lines)


def test_unknown_context_field_lists_turn_fields(client):
    response = client.post(
        "/api/inference/generate-plan",
        json={"utterance": "hi", "context": [{"utterance": "x", "reply": "y"}]},
    )

    error = response.json()["errors"][0]
    assert error["field"] == "context[0].reply"
    assert "utterance, plan, agent_reply" in error["message"]


def test_wrong_content_type_names_fix(client):
    response = client.post(
        "/api/inference/generate-plan",
        content=b'{"utterance": "hi"}',
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 422
    assert "Content-Type: application/json" in response.json()["detail"]


def test_invalid_utf8_is_malformed_json(client):
    response = client.post(
        "/api/inference/generate-plan",
        content=b'{"utterance": "\xff\xfe hi"}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["title"] == "Malformed JSON"


def test_blank_utterance_message_has_no_prefix(client):
    response = client.post("/api/inference/generate-plan", json={"utterance": "  "})

    assert response.json()["errors"][0]["message"].startswith("must contain")


def test_head_health(client):
    assert client.head("/health").status_code == 200


def test_openapi_errors_are_problem_json(client):
    schema = client.get("/openapi.json").json()

    responses = schema["paths"]["/api/inference/generate-plan"]["post"]["responses"]
    for status in ("400", "422", "502", "503", "504"):
        assert "application/problem+json" in responses[status]["content"]


def test_client_disconnect_cancels_generation(ollama, capfd):
    ollama.enqueue(ScriptedReply(content=PLAN, delay_s=3))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(make_settings(ollama.url, ollama_timeout_s=10)), port=port)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"http://127.0.0.1:{port}/api/inference/generate-plan",
                json={"utterance": "Who is my boss?"},
                timeout=0.5,
            )
        logged = ""
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and "generation cancelled" not in logged:
            time.sleep(0.05)
            logged += capfd.readouterr().err
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    # The scripted reply would arrive after 3 s: the cancellation came first.
    assert "client disconnected, plan generation cancelled" in logged
    assert "status=499" in logged


UNKNOWN_FUNCTION_PLAN = "( Yield :output ( LaunchRocket :target ( CurrentUser ) ) )"


def test_unknown_function_is_replaced_by_nearest_example(unbudgeted_client, ollama):
    ollama.enqueue(ScriptedReply(content=UNKNOWN_FUNCTION_PLAN, default_logprob=-0.01))

    body = unbudgeted_client.post(
        "/api/inference/generate-plan", json={"utterance": "boss?"}
    ).json()

    assert body["plan"] == BOSS_PLAN
    assert body["plan_valid"] is True
    assert body["origin"] == "nearest_example"
    assert body["generated_plan"] == UNKNOWN_FUNCTION_PLAN
    assert "LaunchRocket" in body["generated_plan_problem"]
    assert body["confidence"] == 0.0
    assert body["delegation"]["reason"] == "invalid_plan"


def test_unknown_function_is_refused(client, ollama):
    ollama.enqueue(ScriptedReply(content=UNKNOWN_FUNCTION_PLAN, default_logprob=-0.01))

    response = client.post("/api/inference/generate-plan", json={"utterance": UNMATCHED})

    assert response.status_code == 502
    assert response.headers["content-type"] == "application/problem+json"
    assert "fails the plan check" in response.json()["detail"]
    assert "LaunchRocket" not in response.text


def test_known_functions_pass_check(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))

    body = client.post("/api/inference/generate-plan", json={"utterance": "boss?"}).json()

    assert body["plan_valid"] is True
    assert body["plan_problem"] is None


def test_unknown_function_goes_to_large(ollama, bedrock):
    ollama.enqueue(ScriptedReply(content=UNKNOWN_FUNCTION_PLAN, default_logprob=-0.01))

    body = ask(with_large(ollama.url, bedrock, delegation_max_ratio=1.0)).json()

    assert body["plan"] == LARGE_PLAN
    assert body["plan_valid"] is True
    assert body["origin"] == "large_model"
    assert body["delegation"]["reason"] == "invalid_plan"
    assert body["generated_plan"] == UNKNOWN_FUNCTION_PLAN


def test_repeated_request_served_from_cache(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN, default_logprob=math.log(0.9)))
    body = {"utterance": "Who is my boss?"}

    first = client.post("/api/inference/generate-plan", json=body).json()
    second = client.post("/api/inference/generate-plan", json=body).json()

    assert first["cached"] is False
    assert second["cached"] is True
    assert second["plan"] == first["plan"]
    assert second["request_id"] != first["request_id"]
    assert set(second["timings_ms"]) == {"cache", "total"}
    assert len(ollama.requests_to("/api/chat")) == 1


def test_fallback_answer_not_cached(unbudgeted_client, ollama):
    ollama.enqueue(ScriptedReply(content="not a plan"), ScriptedReply(content="not a plan"))
    body = {"utterance": "Who is my boss?"}

    first = unbudgeted_client.post("/api/inference/generate-plan", json=body).json()
    second = unbudgeted_client.post("/api/inference/generate-plan", json=body).json()

    assert first["delegation"]["status"] == "unavailable"  # no large model configured
    assert second["cached"] is False
    assert len(ollama.requests_to("/api/chat")) == 2


def test_cache_off_with_zero_ttl(ollama):
    ollama.enqueue(ScriptedReply(content=PLAN), ScriptedReply(content=PLAN))
    settings = make_settings(ollama.url, response_cache_ttl_s=0)
    with TestClient(create_app(settings)) as test_client:
        for _ in range(2):
            test_client.post("/api/inference/generate-plan", json={"utterance": "Who is my boss?"})

    assert len(ollama.requests_to("/api/chat")) == 2


def test_unexpected_error_keeps_request_id(ollama):
    app = create_app(make_settings(ollama.url))
    with TestClient(app, raise_server_exceptions=False) as client:

        async def broken(*_args, **_kwargs):
            raise RuntimeError("a bug")

        app.state.planner.generate = broken
        response = client.post(
            "/api/inference/generate-plan",
            json={"utterance": "Who is my boss?"},
            headers={"X-Request-ID": "bug-500"},
        )

    assert response.status_code == 500
    assert response.json()["request_id"] == "bug-500"
    assert response.headers["x-request-id"] == "bug-500"
    assert "a bug" not in response.text
