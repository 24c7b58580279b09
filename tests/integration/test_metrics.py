"""GET /metrics after real requests through the application and the real Ollama client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.integration.test_auth import (
    GENERATE_SECRET,
    METRICS_SECRET,
    MODEL,
    PLAN,
    PLAN_URL,
    settings,
)
from tests.support.fake_ollama import FakeOllama, ScriptedReply


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"X-API-Key": METRICS_SECRET})
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_stages_and_answers(ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))
    with TestClient(create_app(settings(ollama.url))) as client:
        client.post(
            PLAN_URL, json={"utterance": "Who is my boss?"}, headers={"X-API-Key": GENERATE_SECRET}
        )
        client.get("/no/such/path")
        found = samples(client)

    plan_path = (("path", PLAN_URL), ("status", "200"))
    assert found[("plan_http_requests_total", plan_path)] == 1
    assert found[("plan_http_requests_total", (("path", "other"), ("status", "404")))] == 1
    assert found[("plan_answers_total", (("model", "small"), ("origin", "generated")))] == 1
    assert found[("plan_stage_duration_seconds_count", (("stage", "small_model"),))] == 1
    assert ("plan_delegation_threshold", ()) in found
    assert ("plan_delegation_ratio", ()) in found


def test_metrics_count_rate_limited_requests(ollama):
    ollama.enqueue(ScriptedReply(content=PLAN))
    limited = settings(ollama.url, rate_limit_per_minute=1, rate_limit_burst=1)
    with TestClient(create_app(limited)) as client:
        for _ in range(2):
            client.post(
                PLAN_URL, json={"utterance": "boss?"}, headers={"X-API-Key": GENERATE_SECRET}
            )
        found = samples(client)

    assert found[("plan_rate_limited_requests_total", ())] == 1


def test_metrics_need_metrics_scope(ollama):
    with TestClient(create_app(settings(ollama.url))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": GENERATE_SECRET}).status_code == 403
