"""The service as a user runs it: a subprocess with the embedded model and the SMCalFlow bank.

The small model is the real SmolLM2-135M running in llama.cpp. The large model
is the local Converse-protocol server, reached through the real boto3 client;
it answers with the gold plan, standing in for a strong model.
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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli.import_bank import main as import_bank
from app.domain import lispress
from tests.conftest import SMCALFLOW_DIR
from tests.support.fake_bedrock import (
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    FakeBedrock,
    Reply,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not (SMCALFLOW_DIR / "bank.dataflow_dialogues.jsonl").is_file(),
        reason=f"SMCalFlow data not found in {SMCALFLOW_DIR}",
    ),
]

STARTUP_TIMEOUT_S = 120
DEV_TURNS = 4


def first_dev_turns(count: int) -> list[dict]:
    """Return the first non-skipped first turns of dev dialogues, in file order."""
    turns = []
    with (SMCALFLOW_DIR / "dev.dataflow_dialogues.jsonl").open(encoding="utf-8") as file:
        for line in file:
            turn = json.loads(line)["turns"][0]
            if not turn["skip"]:
                turns.append(turn)
            if len(turns) == count:
                break
    return turns


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def gold_plans() -> dict[str, str]:
    turns = first_dev_turns(DEV_TURNS)
    return {
        turn["user_utterance"]["original_text"]: lispress.normalize(
            turn["tags"]["original_lispress"]
        )
        for turn in turns
    }


@pytest.fixture(scope="module")
def bank_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bank") / "bank.jsonl"
    status = import_bank(["--out", str(path), str(SMCALFLOW_DIR / "bank.dataflow_dialogues.jsonl")])
    assert status == 0
    return path


@pytest.fixture(scope="module")
def bedrock(gold_plans) -> Iterator[FakeBedrock]:
    def answer_with_gold(request: dict) -> Reply:
        prompt = request["messages"][-1]["content"][-1]["text"]
        utterance = prompt.rsplit("Request: ", 1)[-1]
        return Reply(text=gold_plans.get(utterance, "( FenceScope )"))

    with FakeBedrock(responder=answer_with_gold) as server:
        yield server


@pytest.fixture(scope="module")
def service(bank_path, bedrock, tmp_path_factory) -> Iterator[dict]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("service")  # no .env here: settings come from env only
    log_path = workdir / "service.log"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SMALL_MODEL_BACKEND": "llama-cpp",
        "EXAMPLES_PATH": str(bank_path),
        "LARGE_MODEL_BACKEND": "bedrock",
        "BEDROCK_ENDPOINT_URL": bedrock.endpoint_url,
        "BEDROCK_REGION": TEST_REGION,
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_ACCESS_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
        "LOG_FORMAT": "json",
        # Generous: on a 2-core machine shared with other work, one plan can take a minute.
        "EMBEDDED_TIMEOUT_S": "240",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=workdir, env=env, stdout=log, stderr=log
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base_url, process, log_path)
        yield {"url": base_url, "process": process, "log": log_path}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def wait_until_ready(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"service exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"service not ready after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


def test_ready_names_embedded_backend(service):
    body = httpx.get(f"{service['url']}/ready", timeout=10).json()

    small, large = body["backends"]
    assert small["backend"] == "llama-cpp"
    assert small["model_name"].startswith("SmolLM2-135M")
    assert large["backend"] == "bedrock"
    assert body["examples"] > 9000


def test_dev_utterances_get_plans(service, gold_plans):
    results = []
    for utterance, gold in gold_plans.items():
        response = httpx.post(
            f"{service['url']}/api/inference/generate-plan",
            json={"utterance": utterance},
            timeout=300,
        )
        assert response.status_code == 200, response.text
        results.append((utterance, gold, response.json()))

    for utterance, gold, body in results:
        print(f"\nutterance: {utterance}\n  gold: {gold}\n  plan: {body['plan']}")
        print(
            f"  model={body['model']} origin={body['origin']} confidence={body['confidence']} "
            f"delegation={body['delegation']['reason']} ({body['delegation']['status']})"
        )
        assert body["fallback"] is None, f"the small model failed: {body}"
        assert lispress.parse(body["plan"]) is not None
        assert body["backend"] in {"llama-cpp", "bedrock", "example-bank"}
        assert 0.0 <= body["confidence"] <= 1.0
        assert body["confidence_source"] in {"logprobs", "retrieval", "invalid_plan"}
        assert body["calibration_version"] is None
        if body["origin"] in {"ranked_example", "nearest_example", "bank_answer"}:
            assert body["origin_example_id"]
        assert len(body["few_shot"]) == 8
        if body["delegated"]:
            assert lispress.plans_equal(body["plan"], gold)


def test_event_loop_free_during_generation(service, gold_plans):
    utterance = next(iter(gold_plans))
    with httpx.Client(timeout=300) as client:
        slow = threading.Thread(
            target=client.post,
            args=(f"{service['url']}/api/inference/generate-plan",),
            kwargs={"json": {"utterance": utterance}},
        )
        slow.start()
        time.sleep(0.2)
        started = time.perf_counter()
        health = httpx.get(f"{service['url']}/health", timeout=5)
        health_ms = (time.perf_counter() - started) * 1000
        slow.join()

    assert health.status_code == 200
    assert health_ms < 500


def test_logs_are_json_events(service):
    httpx.post(
        f"{service['url']}/api/inference/generate-plan",
        json={"utterance": "What's the weather like tomorrow?"},
        timeout=300,
    )

    events = [json.loads(line) for line in service["log"].read_text().splitlines() if line]
    messages = [event["message"] for event in events]
    assert any(
        message.startswith("backends configured small_backend=llama-cpp") for message in messages
    )
    assert any(
        message.startswith("request method=POST")
        and "delegated=" in message
        and "request_id" in event
        for message, event in zip(messages, events, strict=True)
    )


def test_sigterm_stops_cleanly(service):
    process = service["process"]

    process.send_signal(signal.SIGTERM)

    # Uvicorn shuts down gracefully, then re-raises the signal, so the exit status names it.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "service stopped" in service["log"].read_text()
