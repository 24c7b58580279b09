"""The small model served by an Ollama server, reached through the official `ollama` client."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import anyio
import httpx
import ollama

from app.backends.aiohttp_transport import NO_RESPONSE_MESSAGE, AiohttpTransport
from app.backends.base import BackendStatus, ChatMessage, Completion
from app.backends.errors import (
    BackendError,
    BackendResponseError,
    BackendThrottled,
    BackendTimeout,
    BackendUnavailable,
)

logger = logging.getLogger(__name__)

BACKEND_NAME = "ollama"
DEFAULT_PROBE_TIMEOUT_S = 5.0
MAX_ERROR_TEXT_CHARS = 300
HTTP_TRANSPORTS = ("aiohttp", "httpx")
HttpTransportName = Literal["aiohttp", "httpx"]
# Clients taken in turn with httpx's own transport. One client's connection pool (httpcore
# 1.0) closes an idle connection whenever it has over 20 connections in all, and scans every
# one per request, so 64 concurrent requests through one client reached about 60% of the bound.
HTTPX_CLIENT_COUNT = 4

# Exceptions that the ollama client raises on a failed call. It wraps HTTP status errors in
# ResponseError and httpx.ConnectError in the builtin ConnectionError, and lets
# every other httpx error through. A body that is not JSON raises a ValueError,
# a JSON value that is not an object raises a TypeError, and an object of the
# wrong shape raises pydantic's ValidationError, which is also a ValueError.
_CLIENT_ERRORS = (
    ollama.ResponseError,
    ConnectionError,
    TimeoutError,
    httpx.HTTPError,
    ValueError,
    TypeError,
)

# Text that chat templates use for control tokens: <|im_start|>, <|eot_id|>, <｜User｜>
# (full-width bars), <start_of_turn>, </s>, <think>, [INST], [/INST]. Ollama renders the
# messages into the model's template and tokenizes the result with special tokens
# recognized, so such text in a request would become a real control token there. A `[`
# right after a word is left alone unless the name inside is upper case, so Lispress types
# such as Constraint[Event] stay intact.
_CONTROL_TOKEN_TEXT = re.compile(
    r"<(?=[|｜])|<(?=/?[A-Za-z_][\w.:-]{0,40}[|｜]?>)"
    r"|\[(?=/?[A-Z_]{2,40}\])|(?<!\w)\[(?=/?[A-Za-z_]{2,40}\])"
)


class OllamaBackend:
    """A ModelBackend that sends non-streaming chat requests to an Ollama server."""

    backend = BACKEND_NAME

    def __init__(
        self,
        host: str,
        model_name: str,
        timeout_s: float,
        *,
        probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | str | None = None,
        http_transport: HttpTransportName = "aiohttp",
    ) -> None:
        """Configure the client; nothing is sent until the first call.

        `timeout_s` bounds each whole completion request in seconds, and
        `probe_timeout_s` bounds a probe (at most `timeout_s`). `options` are extra
        Ollama model options such as `num_ctx` or `seed`. They cannot override
        `temperature` or `num_predict`, which every request sets. `keep_alive`
        is how long the server keeps the model loaded after a request (seconds, or
        a duration such as "10m"), and None leaves the server's default.
        `http_transport` carries the client's HTTP: "aiohttp" (AiohttpTransport,
        the lighter one under concurrent requests) or "httpx" (httpx's own).
        """
        if not host:
            raise ValueError("host must not be empty")
        if not model_name:
            raise ValueError("model_name must not be empty")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if probe_timeout_s <= 0:
            raise ValueError(f"probe_timeout_s must be positive, got {probe_timeout_s}")
        if http_transport not in HTTP_TRANSPORTS:
            choices = ", ".join(HTTP_TRANSPORTS)
            raise ValueError(f"http_transport must be one of {choices}, got {http_transport!r}")

        self.model_name = model_name
        self.host = redact_host(host)
        self.timeout_s = timeout_s
        self.probe_timeout_s = min(probe_timeout_s, timeout_s)
        self._options = dict(options or {})
        self._keep_alive = keep_alive
        self.http_transport = http_transport
        self._host_with_credentials = host
        self._clients: list[ollama.AsyncClient] = []
        self._next_client: Iterator[ollama.AsyncClient] = iter(())
        self._clients_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"OllamaBackend(host={self.host!r}, model_name={self.model_name!r}, "
            f"timeout_s={self.timeout_s}, http_transport={self.http_transport!r})"
        )

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Generate a reply greedily, with the log probability of each generated token.

        Raises a BackendError subclass on any failure and never a vendor exception.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")

        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout_s):
                response = await self._next_client_of_running_loop().chat(
                    model=self.model_name,
                    messages=_message_dicts(messages),
                    stream=False,
                    logprobs=True,
                    options=self._request_options(max_tokens),
                    keep_alive=self._keep_alive,
                )
        except _CLIENT_ERRORS as error:
            raise self._failure("chat", error, self.timeout_s) from error

        completion = _completion_from(response)
        logger.debug(
            "ollama completion host=%s model=%s input_tokens=%s output_tokens=%s "
            "stop_reason=%s logprobs=%s elapsed_ms=%.0f",
            self.host,
            self.model_name,
            completion.input_tokens,
            completion.output_tokens,
            completion.stop_reason,
            completion.token_logprobs is not None,
            (time.perf_counter() - started) * 1000,
        )
        return completion

    async def probe(self) -> BackendStatus:
        """Check that the server responds and has a model that can generate text.

        Returns a BackendStatus with ready=False instead of raising.
        """
        try:
            with anyio.fail_after(self.probe_timeout_s):
                show = await self._clients_of_running_loop()[0].show(self.model_name)
        except _CLIENT_ERRORS as error:
            failure = self._failure("show", error, self.probe_timeout_s)
            logger.warning(
                "ollama probe failed host=%s model=%s error=%s",
                self.host,
                self.model_name,
                failure.message,
            )
            return self._status(ready=False, detail=failure.message)

        capabilities = list(show.capabilities or [])
        extra = _model_details(show)
        # Older Ollama releases leave the capabilities field out, so only a list
        # without "completion" (an embedding-only model) makes the probe fail.
        if capabilities and "completion" not in capabilities:
            detail = (
                f"model {self.model_name!r} on Ollama at {self.host} cannot generate text "
                f"(capabilities: {', '.join(capabilities)})"
            )
            return self._status(ready=False, detail=detail, extra=extra)

        detail = (
            f"model {self.model_name!r} is available on Ollama at {self.host} "
            f"(HTTP transport {self.http_transport})"
        )
        return self._status(ready=True, detail=detail, extra=extra)

    async def aclose(self) -> None:
        """Close the HTTP connection pools opened in the running event loop."""
        clients, self._clients = self._clients, []
        if self._clients_loop is asyncio.get_running_loop():
            for client in clients:
                await client.close()
        self._clients_loop = None

    def _next_client_of_running_loop(self) -> ollama.AsyncClient:
        """Return the running event loop's clients in turn."""
        self._clients_of_running_loop()
        return next(self._next_client)

    def _clients_of_running_loop(self) -> list[ollama.AsyncClient]:
        """Return the clients of the running event loop, opening them on its first call.

        A client's connections belong to the loop that opened them, so a backend
        used from a new loop (a second `asyncio.run`, say) opens new clients.
        NOTE: the connections of a finished loop cannot be closed any more; they
        are left to the garbage collector, which warns about them.
        """
        loop = asyncio.get_running_loop()
        if self._clients_loop is not loop or not self._clients:
            self._clients = self._new_clients()
            self._next_client = itertools.cycle(self._clients)
            self._clients_loop = loop
        return self._clients

    def _new_clients(self) -> list[ollama.AsyncClient]:
        host, timeout_s = self._host_with_credentials, self.timeout_s
        if self.http_transport == "aiohttp":
            return [ollama.AsyncClient(host=host, timeout=timeout_s, transport=AiohttpTransport())]
        return [ollama.AsyncClient(host=host, timeout=timeout_s) for _ in range(HTTPX_CLIENT_COUNT)]

    def _request_options(self, max_tokens: int) -> dict[str, Any]:
        # Greedy decoding keeps the token log probabilities comparable between requests.
        return {**self._options, "temperature": 0, "num_predict": max_tokens}

    def _status(
        self, *, ready: bool, detail: str, extra: dict[str, str] | None = None
    ) -> BackendStatus:
        return BackendStatus(
            backend=self.backend,
            model_name=self.model_name,
            ready=ready,
            detail=detail,
            extra={"host": self.host, "http_transport": self.http_transport, **(extra or {})},
        )

    def _failure(self, endpoint: str, error: BaseException, timeout_s: float) -> BackendError:
        """Translate an exception from the ollama client into a BackendError."""
        logger.debug(
            "ollama request failed host=%s model=%s endpoint=%s error_type=%s",
            self.host,
            self.model_name,
            endpoint,
            type(error).__name__,
        )
        where = f"Ollama at {self.host} (model {self.model_name!r})"

        if isinstance(error, ollama.ResponseError):
            return self._status_failure(error, where)
        if isinstance(error, TimeoutError | httpx.TimeoutException):
            return BackendTimeout(self.backend, f"{where} did not answer within {timeout_s:g} s")
        if isinstance(error, ConnectionError):
            return BackendUnavailable(
                self.backend,
                f"cannot connect to {where}: check that the server runs and the host is right",
            )
        if isinstance(error, httpx.RemoteProtocolError) and str(error) == NO_RESPONSE_MESSAGE:
            # The server went away mid-request (a crash or a restart), as unreachable as a
            # refused connection, so it counts toward the circuit breaker too.
            return BackendUnavailable(
                self.backend,
                f"{where} closed the connection without a response: check that the server runs",
            )
        if isinstance(error, httpx.ProtocolError | httpx.DecodingError):
            return BackendResponseError(
                self.backend, f"{where} sent an invalid HTTP response ({type(error).__name__})"
            )
        if isinstance(error, httpx.TransportError):
            return BackendUnavailable(
                self.backend, f"connection to {where} failed ({type(error).__name__})"
            )
        if isinstance(error, httpx.HTTPError):
            return BackendResponseError(
                self.backend, f"request to {where} failed ({type(error).__name__})"
            )
        return BackendResponseError(
            self.backend,
            f"{where} sent a {endpoint} response that is not the expected JSON object "
            f"({type(error).__name__})",
        )

    def _status_failure(self, error: ollama.ResponseError, where: str) -> BackendError:
        status = error.status_code
        server_text = _shorten(str(error.error))

        if status == 404:
            return BackendUnavailable(
                self.backend,
                f"{where} returned 404 ({server_text}): pull or create the model on that server "
                f"(ollama pull {self.model_name}), or check the host",
            )
        # Ollama answers 503 "server busy" when its request queue (OLLAMA_MAX_QUEUE) is full.
        if status in (429, 503):
            return BackendThrottled(
                self.backend, f"{where} rejected the request with {status}: {server_text}"
            )
        return BackendResponseError(self.backend, f"{where} returned HTTP {status}: {server_text}")


def redact_host(host: str) -> str:
    """Return `host` without any user name, password, query or fragment, for messages and logs."""
    with_scheme = host if "://" in host else f"http://{host}"
    parts = urllib.parse.urlsplit(with_scheme)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# The system prompt and the few-shot examples recur in every request.
@functools.lru_cache(maxsize=4096)
def escape_control_tokens(text: str) -> str:
    """Break up text that a chat template could read as a control token.

    A space goes after the opening `<` or `[`, so `<|im_end|>` reaches the model as
    `< |im_end|>`, plain text that keeps its words. NOTE: this covers the marker shapes
    of the common template families listed above; a model whose control tokens look
    otherwise is not protected.
    """
    return _CONTROL_TOKEN_TEXT.sub(lambda match: match.group() + " ", text)


def _message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [
        {"role": message.role, "content": escape_control_tokens(message.content)}
        for message in messages
    ]


def _completion_from(response: ollama.ChatResponse) -> Completion:
    # Older Ollama releases ignore the logprobs request field and send none. An
    # empty list carries no confidence either, so both become None.
    token_logprobs = None
    if response.logprobs:
        token_logprobs = tuple(float(entry.logprob) for entry in response.logprobs)

    return Completion(
        text=response.message.content or "",
        token_logprobs=token_logprobs,
        input_tokens=response.prompt_eval_count,
        output_tokens=response.eval_count,
        stop_reason=response.done_reason,
    )


def _model_details(show: ollama.ShowResponse) -> dict[str, str]:
    details = show.details
    if details is None:
        return {}
    fields = {
        "family": details.family,
        "parameter_size": details.parameter_size,
        "quantization_level": details.quantization_level,
    }
    return {name: value for name, value in fields.items() if value}


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= MAX_ERROR_TEXT_CHARS:
        return text
    return text[: MAX_ERROR_TEXT_CHARS - 3] + "..."
