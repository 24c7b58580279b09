"""Trace spans of a plan request, collected by the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.core.tracing import configure_tracing
from app.main import create_app
from tests.integration.test_auth import GENERATE_SECRET, MODEL, PLAN, PLAN_URL, settings
from tests.support.fake_ollama import FakeOllama, ScriptedReply


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The planner's module tracer, replaced for this test only: the global provider stays.
    monkeypatch.setattr("app.planner._tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama(models=[MODEL]) as server:
        yield server


def ask(ollama: FakeOllama, **overrides) -> None:
    ollama.enqueue(ScriptedReply(content=PLAN))
    with TestClient(create_app(settings(ollama.url, **overrides))) as client:
        response = client.post(
            PLAN_URL, json={"utterance": "Who is my boss?"}, headers={"X-API-Key": GENERATE_SECRET}
        )
    assert response.status_code == 200


def test_stages_are_child_spans(ollama, spans):
    ask(ollama)

    finished = {span.name: span for span in spans.get_finished_spans()}
    root = finished["plan.generate"]
    stages = ["retrieval", "small_model", "plan_check", "delegation_decision"]
    assert set(stages) <= set(finished)
    for name in stages:
        assert finished[name].parent is not None
        assert finished[name].parent.span_id == root.context.span_id
        assert finished[name].context.trace_id == root.context.trace_id
    assert finished["small_model"].attributes["backend"] == "ollama"
    assert root.attributes["plan.origin"] == "generated"


def test_delegation_has_large_model_span(ollama, spans):
    ask(ollama, delegation_warmup_threshold=1.0, delegation_max_ratio=1.0)

    finished = {span.name: span for span in spans.get_finished_spans()}
    assert finished["delegation_decision"].attributes["delegation.delegate"] is True
    assert finished["large_model"].attributes["delegation.status"] == "unavailable"


def test_tracing_is_off_without_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)

    assert configure_tracing() is None


def test_sdk_disabled_wins_over_endpoint(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")

    assert configure_tracing() is None
