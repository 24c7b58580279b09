"""OllamaBackend over both HTTP transports, against servers that misbehave at the HTTP level.

The aiohttp transport must fail where httpx's own transport fails, with the
same BackendError subclass, and succeed where it succeeds. A case that one
transport still gets wrong is a strict xfail on that transport, with the
reason in the mark.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import os
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pytest

from app.backends.aiohttp_transport import DEFAULT_MAX_CONNECTIONS, AiohttpTransport
from app.backends.base import ChatMessage
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
from tests.support.misbehaving_http import (
    PLAN,
    Handler,
    MisbehavingServer,
    RawRequest,
    RequestHandler,
    ServerConnection,
    body_for,
    chat_body,
    chunked,
    http_response,
    reply_with_plan,
    serve_requests,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "plan-model"
MESSAGES = (ChatMessage(role="user", content="schedule lunch with Jennifer tomorrow at noon"),)
STRAY_PLAN = "( Yield :output ( Stale ) )"
TIMEOUT_S = 0.3
STALL_S = 5.0
LARGE_LOGPROB_COUNT = 400_000  # about 20 MB of JSON
HTTPX_POOL_SIZE = 100  # max_connections of httpx's default Limits

Endpoint = Literal["complete", "probe"]
ENDPOINTS: tuple[Endpoint, ...] = ("complete", "probe")

# Reasons for the strict xfails. Each names the bug, not the test.
DEBUG_MODE_PARSER_BUG = (
    "aiohttp parses responses strictly when PYTHONASYNCIODEBUG or python -X dev is set, and "
    "then rejects a repeated Content-Type, Server or ETag header and bare LF line ends"
)
LOOP_LEAK_BUG = (
    "a backend used from a new event loop opens new clients there, and the connections of "
    "the finished loop can no longer be closed"
)


def transports(*, aiohttp_bug: str | None = None, httpx_bug: str | None = None) -> list[Any]:
    """List both transport names, each a strict xfail where it has the given bug."""
    bugs = {"aiohttp": aiohttp_bug, "httpx": httpx_bug}
    return [pytest.param(name, marks=_xfail(bugs[name]), id=name) for name in HTTP_TRANSPORTS]


def _xfail(reason: str | None) -> list[pytest.MarkDecorator]:
    return [] if reason is None else [pytest.mark.xfail(strict=True, reason=reason)]


@dataclass(frozen=True)
class Misbehaviour:
    """A server fault for a table of cases, with the transports that still get it wrong."""

    name: str
    handler: RequestHandler
    aiohttp_bug: str | None = None


def cases_on_both(cases: list[Misbehaviour]) -> list[Any]:
    """Cross `cases` with both transports, marking the known bugs of the aiohttp one."""
    params = []
    for case in cases:
        for transport in HTTP_TRANSPORTS:
            bug = case.aiohttp_bug if transport == "aiohttp" else None
            params.append(
                pytest.param(case, transport, id=f"{case.name}-{transport}", marks=_xfail(bug))
            )
    return params


@pytest.fixture(params=HTTP_TRANSPORTS)
def http_transport(request: pytest.FixtureRequest) -> HttpTransportName:
    return request.param


@asynccontextmanager
async def backend_for(
    handler: Handler, http_transport: HttpTransportName, *, timeout_s: float = 5.0
) -> AsyncIterator[tuple[MisbehavingServer, OllamaBackend]]:
    """Start a server running `handler` and a backend pointed at it, and close both afterwards."""
    with MisbehavingServer(handler) as server:
        backend = OllamaBackend(
            host=server.url, model_name=MODEL, timeout_s=timeout_s, http_transport=http_transport
        )
        try:
            yield server, backend
        finally:
            await backend.aclose()


async def call(backend: OllamaBackend, endpoint: Endpoint) -> str:
    """Return the completion text, or "ready" or the failure detail of a probe."""
    if endpoint == "complete":
        completion = await backend.complete(MESSAGES, max_tokens=16)
        return completion.text
    status = await backend.probe()
    return "ready" if status.ready else status.detail


EXPECTED = {"complete": PLAN, "probe": "ready"}


# Request handlers. Each returns True to keep reading requests on the connection.


def send_chunked(connection: ServerConnection, request: RawRequest) -> bool:
    body = body_for(request, PLAN)
    pieces = [body[:7], body[7:40], body[40:]]
    headers = [("Transfer-Encoding", "chunked")]
    connection.send(http_response(200, chunked(pieces), headers=headers, content_length=False))
    return True


def send_gzip(connection: ServerConnection, request: RawRequest) -> bool:
    body = gzip.compress(body_for(request, PLAN))
    connection.send(http_response(200, body, headers=[("Content-Encoding", "gzip")]))
    return True


def send_http10_until_close(connection: ServerConnection, request: RawRequest) -> bool:
    body = body_for(request, PLAN)
    connection.send(http_response(200, body, version="HTTP/1.0", content_length=False))
    return False


def send_interim_responses(connection: ServerConnection, request: RawRequest) -> bool:
    connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    connection.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
    connection.send(http_response(200, body_for(request, PLAN)))
    return True


def send_duplicate_headers(connection: ServerConnection, request: RawRequest) -> bool:
    headers = [
        ("X-Request-Id", "1"),
        ("X-Request-Id", "2"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Type", "application/json"),
    ]
    connection.send(http_response(200, body_for(request, PLAN), headers=headers))
    return True


def send_long_header(connection: ServerConnection, request: RawRequest) -> bool:
    headers = [("Content-Security-Policy", "a" * 9_000)]
    connection.send(http_response(200, body_for(request, PLAN), headers=headers))
    return True


def send_many_headers(connection: ServerConnection, request: RawRequest) -> bool:
    headers = [(f"X-Trace-{number}", "1") for number in range(130)]
    connection.send(http_response(200, body_for(request, PLAN), headers=headers))
    return True


def send_without_reason(connection: ServerConnection, request: RawRequest) -> bool:
    connection.send(http_response(200, body_for(request, PLAN), reason=""))
    return True


SUCCESS_CASES = [
    Misbehaviour("chunked", send_chunked),
    Misbehaviour("gzip", send_gzip),
    Misbehaviour("http10-until-close", send_http10_until_close),
    Misbehaviour("interim-1xx", send_interim_responses),
    Misbehaviour("duplicate-headers", send_duplicate_headers),
    Misbehaviour("no-reason-phrase", send_without_reason),
    Misbehaviour(
        "long-header",
        send_long_header,
    ),
    Misbehaviour(
        "many-headers",
        send_many_headers,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("case", "http_transport"), cases_on_both(SUCCESS_CASES))
async def test_unusual_response_accepted(
    case: Misbehaviour, http_transport: HttpTransportName, endpoint: Endpoint
) -> None:
    handler = serve_requests(case.handler, case.handler)

    async with backend_for(handler, http_transport) as (_, backend):
        first = await call(backend, endpoint)
        second = await call(backend, endpoint)

    assert first == EXPECTED[endpoint]
    assert second == EXPECTED[endpoint]


def stall_before_headers(connection: ServerConnection, request: RawRequest) -> bool:
    connection.stall(STALL_S)
    return False


def stall_mid_body(connection: ServerConnection, request: RawRequest) -> bool:
    response = http_response(200, body_for(request, PLAN))
    connection.send(response[: len(response) - 20])
    connection.stall(STALL_S)
    return False


def reset_mid_body(connection: ServerConnection, request: RawRequest) -> bool:
    response = http_response(200, body_for(request, PLAN))
    connection.send(response[: len(response) - 20])
    # The pause lets the partial body reach the client before the RST does.
    connection.stall(0.05)
    connection.reset()
    return False


def reset_before_response(connection: ServerConnection, request: RawRequest) -> bool:
    connection.reset()
    return False


def send_conflicting_lengths(connection: ServerConnection, request: RawRequest) -> bool:
    body = body_for(request, PLAN)
    headers = [("Content-Length", str(len(body) + 5))]
    connection.send(http_response(200, body, headers=headers))
    return False


def send_invalid_gzip(connection: ServerConnection, request: RawRequest) -> bool:
    headers = [("Content-Encoding", "gzip")]
    connection.send(http_response(200, b"not gzip at all", headers=headers))
    return True


def send_html_500(connection: ServerConnection, request: RawRequest) -> bool:
    body = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    connection.send(http_response(500, body, content_type="text/html"))
    return True


def send_html_503(connection: ServerConnection, request: RawRequest) -> bool:
    body = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
    connection.send(http_response(503, body, content_type="text/html"))
    return True


@dataclass(frozen=True)
class Failure(Misbehaviour):
    """A server fault and the BackendError it must become."""

    error: type[BackendError] = BackendError
    message: str = ""


FAILURE_CASES = [
    Failure(
        "slow-headers",
        stall_before_headers,
        error=BackendTimeout,
        message=f"did not answer within {TIMEOUT_S:g} s",
    ),
    Failure(
        "stalled-body",
        stall_mid_body,
        error=BackendTimeout,
        message=f"did not answer within {TIMEOUT_S:g} s",
    ),
    Failure(
        "reset-mid-body",
        reset_mid_body,
        error=BackendUnavailable,
        message="failed (ReadError)",
    ),
    Failure(
        "reset-before-response",
        reset_before_response,
        error=BackendUnavailable,
        message="failed (ReadError)",
    ),
    Failure(
        "conflicting-content-length",
        send_conflicting_lengths,
        error=BackendResponseError,
        message="sent an invalid HTTP response (RemoteProtocolError)",
    ),
    Failure(
        "invalid-gzip",
        send_invalid_gzip,
        error=BackendResponseError,
        message="sent an invalid HTTP response (DecodingError)",
    ),
    Failure(
        "html-500",
        send_html_500,
        error=BackendResponseError,
        message="returned HTTP 500: <html><body><h1>500 Internal Server Error</h1>",
    ),
    Failure(
        "html-503",
        send_html_503,
        error=BackendThrottled,
        message="rejected the request with 503: <html><body><h1>503 Service Unavailable",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("case", "http_transport"), cases_on_both(FAILURE_CASES))
async def test_faulty_response_mapped(case: Failure, http_transport: HttpTransportName) -> None:
    handler = serve_requests(case.handler)

    async with backend_for(handler, http_transport, timeout_s=TIMEOUT_S) as (_, backend):
        started = time.perf_counter()
        with pytest.raises(BackendError) as caught:
            await backend.complete(MESSAGES, max_tokens=16)
        elapsed = time.perf_counter() - started
        after = await backend.complete(MESSAGES, max_tokens=16)

    assert type(caught.value) is case.error
    assert case.message in caught.value.message
    assert elapsed < TIMEOUT_S + 1.0
    assert after.text == PLAN


@pytest.mark.anyio
@pytest.mark.parametrize(("case", "http_transport"), cases_on_both(FAILURE_CASES))
async def test_faulty_response_probe(case: Failure, http_transport: HttpTransportName) -> None:
    handler = serve_requests(case.handler)

    async with backend_for(handler, http_transport, timeout_s=TIMEOUT_S) as (_, backend):
        started = time.perf_counter()
        status = await backend.probe()
        elapsed = time.perf_counter() - started
        after = await backend.probe()

    assert status.ready is False
    assert case.message in status.detail
    assert elapsed < TIMEOUT_S + 1.0
    assert after.ready is True


def close_when_idle(connection: ServerConnection, request: RawRequest) -> bool:
    connection.send(http_response(200, body_for(request, PLAN)))
    connection.stall(0.03)
    return False


def close_right_after_response(connection: ServerConnection, request: RawRequest) -> bool:
    # No "Connection: close": the client learns of the close only from the FIN.
    connection.send_and_close(http_response(200, body_for(request, PLAN)))
    return False


def send_stray_response_when_idle(connection: ServerConnection, request: RawRequest) -> bool:
    connection.send(http_response(200, body_for(request, PLAN)))
    connection.stall(0.03)
    # A response to no request. A client that reuses this connection reads it as the
    # response to its next request.
    connection.send(http_response(200, body_for(request, STRAY_PLAN)))
    return True


@dataclass(frozen=True)
class Reuse(Misbehaviour):
    """A way a server spoils an idle keep-alive connection, and the client's pause between calls."""

    pause_s: float = 0.0


REUSE_CASES = [
    Reuse("idle-close", close_when_idle, pause_s=0.1),
    Reuse(
        "close-after-response",
        close_right_after_response,
    ),
    Reuse(
        "stray-response-when-idle",
        send_stray_response_when_idle,
        pause_s=0.1,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(("case", "http_transport"), cases_on_both(REUSE_CASES))
async def test_spoiled_connection_not_reused(
    case: Reuse, http_transport: HttpTransportName, endpoint: Endpoint
) -> None:
    handler = serve_requests(case.handler, case.handler)
    outcomes = []

    async with backend_for(handler, http_transport) as (server, backend):
        for _ in range(3):
            outcomes.append(await call(backend, endpoint))
            # Even a zero sleep would let the event loop see the FIN before the next call.
            if case.pause_s:
                await anyio.sleep(case.pause_s)
        connection_count = server.connection_count

    assert outcomes == [EXPECTED[endpoint]] * 3
    assert connection_count == 3


@functools.cache
def large_response() -> bytes:
    return http_response(200, chat_body(PLAN, logprob_count=LARGE_LOGPROB_COUNT))


def send_large_body(connection: ServerConnection, request: RawRequest) -> bool:
    connection.send(large_response())
    return True


@pytest.mark.anyio
async def test_large_body_complete(http_transport: HttpTransportName) -> None:
    handler = serve_requests(send_large_body, send_large_body)

    async with backend_for(handler, http_transport, timeout_s=20.0) as (_, backend):
        completion = await backend.complete(MESSAGES, max_tokens=16)

    assert len(large_response()) > 20_000_000
    assert completion.text == PLAN
    assert completion.token_logprobs is not None
    assert len(completion.token_logprobs) == LARGE_LOGPROB_COUNT


@dataclass
class CancelledConnection:
    """The server's record of the connection whose request the client cancelled."""

    closed_by_client: bool | None = None


def cancelled_exchange(send_partial_body: bool) -> tuple[Handler, CancelledConnection]:
    """Build a handler that never finishes its first response, and its record of the client."""
    record = CancelledConnection()

    def hold(connection: ServerConnection, request: RawRequest) -> bool:
        if send_partial_body:
            response = http_response(200, body_for(request, PLAN))
            connection.send(response[: len(response) // 2])
        record.closed_by_client = connection.wait_for_eof(3.0)
        return False

    return serve_requests(hold), record


@pytest.mark.anyio
@pytest.mark.parametrize("send_partial_body", [False, True], ids=["before-headers", "mid-body"])
async def test_cancelled_request_leaves_pool_usable(
    http_transport: HttpTransportName, send_partial_body: bool
) -> None:
    handler, cancelled = cancelled_exchange(send_partial_body)

    async with backend_for(handler, http_transport) as (server, backend):
        with anyio.move_on_after(0.2) as scope:
            await backend.complete(MESSAGES, max_tokens=16)
        after = await backend.complete(MESSAGES, max_tokens=16)
        await anyio.sleep(0.05)
        connection_count = server.connection_count

    assert scope.cancelled_caught
    assert after.text == PLAN
    assert connection_count == 2
    assert cancelled.closed_by_client is True


def reply_after_pause(connection: ServerConnection, request: RawRequest) -> bool:
    connection.stall(0.1)
    connection.send(http_response(200, body_for(request, PLAN)))
    return True


@pytest.mark.anyio
async def test_concurrent_requests_beyond_pool(http_transport: HttpTransportName) -> None:
    texts: list[str] = []

    async def complete_once(backend: OllamaBackend) -> None:
        completion = await backend.complete(MESSAGES, max_tokens=16)
        texts.append(completion.text)

    handler = serve_requests(reply_after_pause, reply_after_pause)
    async with backend_for(handler, http_transport) as (server, backend):
        async with anyio.create_task_group() as group:
            for _ in range(2 * DEFAULT_MAX_CONNECTIONS):
                group.start_soon(complete_once, backend)
        max_open = server.max_open_connections

    assert texts == [PLAN] * (2 * DEFAULT_MAX_CONNECTIONS)
    # httpx's own transport spreads requests over its clients, each with its own pool.
    pool_size = {"aiohttp": DEFAULT_MAX_CONNECTIONS, "httpx": HTTPX_CLIENT_COUNT * HTTPX_POOL_SIZE}
    assert max_open <= pool_size[http_transport]


@pytest.mark.anyio
async def test_pool_full_times_out() -> None:
    handler = serve_requests(stall_before_headers)
    transport = AiohttpTransport(max_connections=1)
    timeout = httpx.Timeout(5.0, pool=0.2)

    with MisbehavingServer(handler) as server:
        client = httpx.AsyncClient(transport=transport, timeout=timeout)
        async with client, anyio.create_task_group() as group:
            group.start_soon(client.post, f"{server.url}/api/chat")
            await anyio.sleep(0.1)
            started = time.perf_counter()
            with pytest.raises(httpx.TimeoutException):
                await client.post(f"{server.url}/api/chat")
            elapsed = time.perf_counter() - started
            group.cancel_scope.cancel()

    assert elapsed < 1.0


@pytest.mark.anyio
@pytest.mark.parametrize("transport_name", HTTP_TRANSPORTS)
async def test_http10_version_reported(transport_name: str) -> None:
    handler = serve_requests(send_http10_until_close)
    transport = AiohttpTransport() if transport_name == "aiohttp" else httpx.AsyncHTTPTransport()

    with MisbehavingServer(handler) as server:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"{server.url}/api/chat", content=b"{}")

    assert response.http_version == "HTTP/1.0"


def keep_alive_server() -> MisbehavingServer:
    return MisbehavingServer(serve_requests(reply_with_plan, reply_with_plan))


@contextmanager
def resource_warnings() -> Iterator[list[str]]:
    """Collect the ResourceWarnings raised in the block, up to a garbage collection at its end."""
    found: list[str] = []
    gc.collect()  # so that leaks of earlier tests are not counted here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
        gc.collect()
    found.extend(str(item.message) for item in caught if item.category is ResourceWarning)


def complete_in_loops(url: str, http_transport: HttpTransportName, loop_count: int) -> list[str]:
    """Run completions in `loop_count` successive event loops, closing the backend in the last one.

    Each loop sends HTTPX_CLIENT_COUNT + 1 requests, so that every client of httpx's
    transport sends one.
    """
    backend = OllamaBackend(
        host=url, model_name=MODEL, timeout_s=5.0, http_transport=http_transport
    )

    async def complete_several(close: bool) -> list[str]:
        texts = []
        for _ in range(HTTPX_CLIENT_COUNT + 1):
            completion = await backend.complete(MESSAGES, max_tokens=16)
            texts.append(completion.text)
        if close:
            await backend.aclose()
        return texts

    texts = []
    for number in range(1, loop_count + 1):
        texts += asyncio.run(complete_several(close=number == loop_count))
    return texts


def test_aclose_leaves_nothing_open(http_transport: HttpTransportName) -> None:
    with keep_alive_server() as server, resource_warnings() as leaks:
        texts = complete_in_loops(server.url, http_transport, loop_count=1)

    assert texts == [PLAN] * (HTTPX_CLIENT_COUNT + 1)
    assert leaks == []


# test_second_event_loop_no_leak checks the leaks, so their warnings are ignored here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("http_transport", HTTP_TRANSPORTS)
def test_second_event_loop_complete(http_transport: HttpTransportName) -> None:
    with keep_alive_server() as server:
        texts = complete_in_loops(server.url, http_transport, loop_count=2)

    assert texts == [PLAN] * (2 * HTTPX_CLIENT_COUNT + 2)


@pytest.mark.parametrize(
    "http_transport", transports(aiohttp_bug=LOOP_LEAK_BUG, httpx_bug=LOOP_LEAK_BUG)
)
def test_second_event_loop_no_leak(http_transport: HttpTransportName) -> None:
    with keep_alive_server() as server, resource_warnings() as leaks:
        complete_in_loops(server.url, http_transport, loop_count=2)

    assert leaks == []


# Runs one completion against a server that sends Content-Type twice, in a fresh interpreter.
DUPLICATE_CONTENT_TYPE_SCRIPT = """
import asyncio, sys
from app.backends.ollama import OllamaBackend
from tests.integration.test_aiohttp_transport import MESSAGES, MODEL, send_duplicate_headers
from tests.support.misbehaving_http import MisbehavingServer, serve_requests

async def main(transport):
    handler = serve_requests(send_duplicate_headers, send_duplicate_headers)
    with MisbehavingServer(handler) as server:
        backend = OllamaBackend(server.url, MODEL, 5.0, http_transport=transport)
        try:
            completion = await backend.complete(MESSAGES, max_tokens=16)
        finally:
            await backend.aclose()
    print(completion.text)

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("http_transport", transports(aiohttp_bug=DEBUG_MODE_PARSER_BUG))
def test_asyncio_debug_mode_same_parsing(http_transport: HttpTransportName) -> None:
    environment = {**os.environ, "PYTHONASYNCIODEBUG": "1"}
    command = [sys.executable, "-c", DUPLICATE_CONTENT_TYPE_SCRIPT, http_transport]

    result = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=20
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == PLAN
