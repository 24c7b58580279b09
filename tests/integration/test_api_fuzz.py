"""Property-based API fuzzing with schemathesis: no 5xx, and every response matches the schema.

The service runs in-process with the real Ollama client against the local
Ollama-protocol server, which answers every chat with a fixed plan.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.core.api_keys import new_key
from app.core.config import Settings
from app.main import create_app
from tests.support.fake_ollama import FakeOllama

MODEL = "plan-model"
SECRET, KEY = new_key("fuzz", ["generate", "metrics"])

# Schemathesis loads the schema when the module is imported, and calls the app
# through its own ASGI transport, so the server must run before the app exists.
_server = FakeOllama(models=[MODEL]).__enter__()
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(
        Settings(
            _env_file=None,
            small_model_backend="ollama",
            ollama_host=_server.url,
            local_model_name=MODEL,
            large_model_backend="none",
            log_level="WARNING",
            rate_limit_per_minute=0,
            api_keys=KEY.entry(),
        )
    ),
)


@pytest.fixture(scope="module", autouse=True)
def _stop_server() -> Iterator[None]:
    yield
    _server.__exit__(None, None, None)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz_no_server_error(case):
    response = case.call(headers={"X-API-Key": SECRET})

    case.validate_response(response)
    assert response.status_code < 500
