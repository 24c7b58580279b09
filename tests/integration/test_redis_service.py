"""The service with REDIS_URL: a shared policy and cache, and a Redis that dies mid-run."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.integration.test_api import MODEL, PLAN, make_settings
from tests.support.fake_ollama import FakeOllama, ScriptedReply

GENERATE = "/api/inference/generate-plan"


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    def confident(_request: dict) -> ScriptedReply:
        return ScriptedReply(content=PLAN, default_logprob=math.log(0.9))

    with FakeOllama(models=[MODEL], responder=confident) as server:
        yield server


def redis_app(ollama: FakeOllama, redis_url: str, **overrides) -> TestClient:
    settings = make_settings(ollama.url, redis_url=redis_url, rate_limit_per_minute=0, **overrides)
    return TestClient(create_app(settings))


def metric_value(client: TestClient, name: str) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_no_request_fails_when_redis_restarts(ollama, redis_server):
    stores, statuses = [], []
    with redis_app(ollama, redis_server.url, response_cache_ttl_s=0) as client:
        for index in range(60):
            if index == 20:
                redis_server.kill()
            if index == 40:
                redis_server.start()
                time.sleep(1.1)  # the store tries Redis again after one second
            response = client.post(GENERATE, json={"utterance": f"Who is my manager {index}?"})
            statuses.append(response.status_code)
            stores.append(response.json()["delegation"]["store"])
            if index == 30:
                ready_while_down = client.get("/ready").json()["policy_store"]
        ready_after = client.get("/ready").json()["policy_store"]
        local_decisions = metric_value(
            client, 'plan_delegation_store_decisions_total{store="memory"}'
        )

    assert statuses == [200] * 60
    assert set(stores[:20]) == {"redis"}
    assert set(stores[20:40]) == {"memory"}
    assert set(stores[40:]) == {"redis"}
    assert ready_while_down["shared"] is False
    assert ready_after == {"backend": "redis", "shared": True, "detail": None}
    assert local_decisions == 20


def test_replicas_share_the_response_cache(ollama, redis_server):
    body = {"utterance": "Who is my manager?"}
    with redis_app(ollama, redis_server.url) as first:
        answered = first.post(GENERATE, json=body).json()
    with redis_app(ollama, redis_server.url) as second:
        cached = second.post(GENERATE, json=body)

    assert cached.status_code == 200
    assert cached.json()["cached"] is True
    assert cached.json()["plan"] == answered["plan"]
    assert cached.json()["request_id"] == cached.headers["x-request-id"]
    assert len(ollama.requests_to("/api/chat")) == 1


def test_cache_miss_when_redis_is_down(ollama, redis_server):
    body = {"utterance": "Who is my manager?"}
    with redis_app(ollama, redis_server.url) as client:
        client.post(GENERATE, json=body)
        redis_server.kill()
        again = client.post(GENERATE, json=body)

    assert again.status_code == 200
    assert again.json()["cached"] is False
    assert len(ollama.requests_to("/api/chat")) == 2
