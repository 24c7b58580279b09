"""The service with REDIS_URL: a shared policy and cache, and a Redis that dies mid-run."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.integration.test_api import MODEL, PLAN, make_settings
from tests.integration.test_shutdown import free_port, service_environment
from tests.support.fake_ollama import FakeOllama, ScriptedReply
from tests.support.redis_server import RedisServer

GENERATE = "/api/inference/generate-plan"


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    def confident(_request: dict) -> ScriptedReply:
        return ScriptedReply(content=PLAN, default_logprob=math.log(0.9))

    with FakeOllama(models=[MODEL], responder=confident) as server:
        yield server


def redis_app(ollama: FakeOllama, redis_url: str, **overrides) -> TestClient:
    settings = make_settings(
        ollama.url, redis_url=redis_url, **{"rate_limit_per_minute": 0, **overrides}
    )
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


def test_workers_share_redis(ollama, redis_server, tmp_path):
    port = free_port()
    environment = {
        **service_environment(port, ollama.url, grace_s=5),
        "WORKERS": "4",
        "REDIS_URL": redis_server.url,
        "RESPONSE_CACHE_TTL_S": "0",
    }
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], env=environment, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while log_path.read_text().count("Application startup complete") < 4:
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            assert process.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=10) as client:
            responses = [
                client.post(GENERATE, json={"utterance": f"Who is my manager {index}?"})
                for index in range(40)
            ]
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)

    assert [response.status_code for response in responses] == [200] * 40
    assert {response.json()["delegation"]["store"] for response in responses} == {"redis"}
    assert exit_code == 0


def test_replicas_share_the_rate_limit(ollama, redis_server):
    limited = dict(rate_limit_per_minute=1, rate_limit_burst=2, response_cache_ttl_s=0)
    with (
        redis_app(ollama, redis_server.url, **limited) as first,
        redis_app(ollama, redis_server.url, **limited) as second,
    ):
        statuses = [
            replica.post(GENERATE, json={"utterance": f"Who is my manager {index}?"})
            for index, replica in enumerate([first, second, first])
        ]

    assert [response.status_code for response in statuses] == [200, 200, 429]
    assert statuses[2].headers["retry-after"]


def test_rate_limit_falls_back_when_redis_is_down(ollama, redis_server):
    limited = dict(rate_limit_per_minute=1, rate_limit_burst=1, response_cache_ttl_s=0)
    with redis_app(ollama, redis_server.url, **limited) as client:
        redis_server.kill()
        statuses = [
            client.post(GENERATE, json={"utterance": f"Who is my boss {index}?"}).status_code
            for index in range(2)
        ]

    assert statuses == [200, 429]


def test_invalid_cache_entry_is_a_miss(ollama, redis_server):
    body = {"utterance": "Who is my manager?"}
    with redis_app(ollama, redis_server.url) as client:
        client.post(GENERATE, json=body)
        store = redis.Redis.from_url(redis_server.url)
        for key in store.keys("*:cache:*"):
            store.set(key, '{"plan": 5}')
        again = client.post(GENERATE, json=body)

    assert again.status_code == 200
    assert again.json()["cached"] is False
    assert len(ollama.requests_to("/api/chat")) == 2


def test_hung_redis_costs_little(ollama, redis_server):
    body = {"utterance": "Who is my manager?"}
    settings = dict(redis_timeout_s=0.2, rate_limit_per_minute=600, rate_limit_burst=100)
    with redis_app(ollama, redis_server.url, **settings) as client:
        client.post(GENERATE, json=body)
        redis_server.pause()
        try:
            started = time.perf_counter()
            for index in range(5):
                client.post(GENERATE, json={"utterance": f"Who is my manager {index}?"})
            elapsed = time.perf_counter() - started
        finally:
            redis_server.resume()

    # The first request waits out three timeouts (rate limit, cache, policy), the rest none.
    # Without the rest, each of the five would wait at least three (rate limit, cache get
    # and put): 3 s in all.
    assert elapsed < 1.5


def test_wrong_redis_password_stops_start(ollama, redis_server_binary):
    server = RedisServer(redis_server_binary, "--requirepass", "right-password").start()
    try:
        url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        with pytest.raises(RuntimeError, match="rejected the credentials"), redis_app(ollama, url):
            pass
    finally:
        server.close()
