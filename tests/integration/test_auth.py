"""API keys on the routes, through the real application and the real Ollama client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.schemas import CONTEXT_TEXT_MAX_CHARS, UTTERANCE_MAX_CHARS
from app.core.api_keys import new_key
from app.core.config import Settings
from app.main import create_app
from tests.integration.test_api import make_settings
from tests.support.fake_ollama import FakeOllama, ScriptedReply

MODEL = "plan-model"
PLAN = "( Yield :output ( FindManager :recipient ( toRecipient ( CurrentUser ) ) ) )"
PLAN_URL = "/api/inference/generate-plan"
GENERATE_SECRET, GENERATE_KEY = new_key("client", ["generate"])
METRICS_SECRET, METRICS_KEY = new_key("ops", ["metrics"])


def settings(ollama_url: str, **overrides) -> Settings:
    """Return test_api's settings with two keys: one for plans, one for metrics."""
    keys = f"{GENERATE_KEY.entry()};{METRICS_KEY.entry()}"
    return make_settings(ollama_url, **{"api_keys": keys, **overrides})


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


@pytest.fixture
def client(ollama) -> Iterator[TestClient]:
    with TestClient(create_app(settings(ollama.url))) as test_client:
        yield test_client


def ask(client: TestClient, headers: dict[str, str]):
    return client.post(PLAN_URL, json={"utterance": "Who is my boss?"}, headers=headers)


def test_bearer_key_is_accepted(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))

    response = ask(client, {"Authorization": f"Bearer {GENERATE_SECRET}"})

    assert response.status_code == 200
    assert response.json()["plan"] == PLAN


def test_header_key_is_accepted(client, ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))

    assert ask(client, {"X-API-Key": GENERATE_SECRET}).status_code == 200


def test_missing_key_is_401(client, ollama):
    response = ask(client, {})

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "WWW-Authenticate" in response.headers
    assert "X-API-Key" in response.json()["detail"]
    assert ollama.requests_to("/api/chat") == []


def test_wrong_key_is_401(ollama, capfd):
    # The app starts inside the test, so that its log handler writes to captured stderr.
    with TestClient(create_app(settings(ollama.url))) as client:
        response = ask(client, {"X-API-Key": GENERATE_SECRET + "x"})

    logged = capfd.readouterr().err
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key."
    assert "request with an invalid API key" in logged
    assert GENERATE_SECRET not in logged


def test_wrong_scope_is_403(client):
    response = ask(client, {"X-API-Key": METRICS_SECRET})

    assert response.status_code == 403
    assert "'generate' scope" in response.json()["detail"]
    assert response.json()["request_id"]


def test_ready_needs_metrics_scope(client):
    assert client.get("/ready").status_code == 401
    assert client.get("/ready", headers={"X-API-Key": GENERATE_SECRET}).status_code == 403
    assert client.get("/ready", headers={"X-API-Key": METRICS_SECRET}).status_code == 200


def test_health_stays_open(client):
    assert client.get("/health").status_code == 200


def test_no_keys_configured_admits_all(ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))
    with TestClient(create_app(settings(ollama.url, api_keys=None))) as open_client:
        assert ask(open_client, {}).status_code == 200


def test_open_service_beyond_localhost_warns(ollama, capfd):
    # The host is only compared here: TestClient binds no socket.
    open_settings = settings(ollama.url, api_keys=None, host="0.0.0.0")  # noqa: S104
    with TestClient(create_app(open_settings)):
        pass

    assert "NO API KEYS" in capfd.readouterr().err


def test_openapi_lists_both_key_schemes(client):
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]

    assert {scheme["type"] for scheme in schemes.values()} == {"http", "apiKey"}


def test_rate_limit_answers_429_with_retry_after(ollama):
    limited = settings(ollama.url, rate_limit_per_minute=1, rate_limit_burst=2)
    ollama.enqueue(ScriptedReply(content=PLAN))
    ollama.enqueue(ScriptedReply(content=PLAN))
    headers = {"X-API-Key": GENERATE_SECRET}
    with TestClient(create_app(limited)) as client:
        statuses = [ask(client, headers).status_code for _ in range(3)]
        rejected = ask(client, headers)

    assert statuses == [200, 200, 429]
    assert int(rejected.headers["Retry-After"]) > 1
    assert "a minute" in rejected.json()["detail"]


def test_rate_limit_counts_each_key_apart(ollama):
    other_secret, other_key = new_key("other", ["generate"])
    limited = settings(
        ollama.url,
        rate_limit_per_minute=1,
        rate_limit_burst=1,
        api_keys=f"{GENERATE_KEY.entry()};{other_key.entry()}",
    )
    ollama.enqueue(ScriptedReply(content=PLAN))
    ollama.enqueue(ScriptedReply(content=PLAN))
    with TestClient(create_app(limited)) as client:
        first = ask(client, {"X-API-Key": GENERATE_SECRET}).status_code
        second = ask(client, {"X-API-Key": other_secret}).status_code

    assert (first, second) == (200, 200)


def test_declared_large_body_is_413(ollama):
    with TestClient(create_app(settings(ollama.url, max_body_bytes=2048))) as client:
        response = client.post(
            PLAN_URL,
            json={"utterance": "x" * 3000},
            headers={"X-API-Key": GENERATE_SECRET},
        )

    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert ollama.requests_to("/api/chat") == []


def test_chunked_large_body_is_413(ollama):
    def chunks():
        yield b'{"utterance": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    with TestClient(create_app(settings(ollama.url, max_body_bytes=2048))) as client:
        response = client.post(
            PLAN_URL,
            content=chunks(),
            headers={"X-API-Key": GENERATE_SECRET, "Content-Type": "application/json"},
        )

    assert response.status_code == 413
    assert ollama.requests_to("/api/chat") == []


def test_largest_valid_request_fits_default_limit(ollama):
    wide = "日"  # six bytes once json.dumps escapes it, as it does by default
    turn = {
        "utterance": wide * UTTERANCE_MAX_CHARS,
        "plan": wide * CONTEXT_TEXT_MAX_CHARS,
        "agent_reply": wide * CONTEXT_TEXT_MAX_CHARS,
    }
    body = json.dumps({"utterance": wide * UTTERANCE_MAX_CHARS, "context": [turn] * 10})
    ollama.enqueue(ScriptedReply(content=PLAN))

    with TestClient(create_app(settings(ollama.url))) as client:
        response = client.post(
            PLAN_URL,
            content=body,
            headers={"X-API-Key": GENERATE_SECRET, "Content-Type": "application/json"},
        )

    assert len(body) > 512 * 1024
    assert response.status_code != 413
