"""The large-model backend: a model on Amazon Bedrock, called through the boto3 Converse API."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import NoCredentialsError, PartialCredentialsError

from app.backends.base import BackendStatus, ChatMessage, Completion
from app.backends.bedrock_converse import (
    BACKEND_NAME,
    CREDENTIALS_FIX,
    completion_from_response,
    to_converse_messages,
    translate_error,
)
from app.backends.errors import BackendError, BackendTimeout, BackendUnavailable

logger = logging.getLogger(__name__)

_SERVICE = "bedrock-runtime"
_CONVERSE_EVENT_SUFFIX = "bedrock-runtime.Converse"

# A connection attempt that hangs must leave time for a retry within the call's deadline.
_MAX_CONNECT_TIMEOUT_S = 5.0

_T = TypeVar("_T")


class _CallAbandoned(Exception):
    """Raised inside botocore to stop retrying a call whose caller no longer waits for it."""


@dataclass(eq=False)
class _Call:
    """One Converse call, shared with the botocore event handlers in its worker thread."""

    deadline: float  # time.monotonic() value
    abandoned: threading.Event = field(default_factory=threading.Event)
    attempts: int = 0
    last_error: str | None = None


class BedrockBackend:
    """A Converse model on Amazon Bedrock, with boto3 run on a bounded thread pool."""

    backend = BACKEND_NAME

    def __init__(
        self,
        model_id: str,
        region: str,
        *,
        endpoint_url: str | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 3,
        max_concurrency: int = 8,
    ) -> None:
        """Configure the backend; no AWS call or credential lookup happens here.

        `timeout_s` bounds one complete() call, retries and backoff included, and is
        also each attempt's read timeout. `max_attempts` counts the first attempt.
        `max_concurrency` is the number of worker threads and pooled connections.
        """
        if not model_id:
            raise ValueError("model_id must not be empty")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")

        self.model_name = model_id
        self._region = region
        self._endpoint_url = endpoint_url
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        # botocore's retries "max_attempts" counts retries only, "total_max_attempts" counts all.
        self._config = Config(
            region_name=region,
            connect_timeout=min(timeout_s, _MAX_CONNECT_TIMEOUT_S),
            read_timeout=timeout_s,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max_concurrency,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrency, thread_name_prefix="bedrock"
        )
        # Guards the boto3 session, which is not thread-safe, and the lazily built client.
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._client: BaseClient | None = None
        self._local = threading.local()
        self._calls: set[_Call] = set()
        self._closed = False
        self._last_probe_ready: bool | None = None

    def __repr__(self) -> str:
        return (
            f"BedrockBackend(model_id={self.model_name!r}, region={self._region!r}, "
            f"endpoint_url={self._endpoint_url!r}, timeout_s={self._timeout_s}, "
            f"max_attempts={self._max_attempts})"
        )

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Generate a reply with temperature 0.

        Raises ValueError for a prompt that Converse cannot take and a BackendError
        subclass for every failure of the call itself.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        system, conversation = to_converse_messages(messages)
        request: dict[str, Any] = {
            "modelId": self.model_name,
            "messages": conversation,
            "inferenceConfig": {"maxTokens": max_tokens, "temperature": 0},
        }
        if system:
            request["system"] = system

        call = _Call(deadline=time.monotonic() + self._timeout_s)
        started = time.monotonic()
        try:
            response = await self._converse(call, request)
            completion = completion_from_response(response, self.model_name)
        except BackendError as error:
            logger.warning(
                "bedrock_call_failed model=%s region=%s error=%s attempts=%d elapsed_ms=%d "
                "message=%r",
                self.model_name,
                self._region,
                type(error).__name__,
                call.attempts,
                _elapsed_ms(started),
                error.message,
            )
            raise

        logger.info(
            "bedrock_completion model=%s region=%s attempts=%d elapsed_ms=%d input_tokens=%s "
            "output_tokens=%s stop_reason=%s",
            self.model_name,
            self._region,
            call.attempts,
            _elapsed_ms(started),
            completion.input_tokens,
            completion.output_tokens,
            completion.stop_reason,
        )
        return completion

    async def probe(self) -> BackendStatus:
        """Report ready when the AWS credential chain yields credentials.

        Raises nothing but asyncio.CancelledError, because a failed lookup is a
        not-ready status. No Bedrock request is sent, so a ready probe does not prove
        that the model is enabled for these credentials in this region.
        """
        where = f"region={self._region} model={self.model_name}"
        source: str | None = None
        if self._closed:
            detail = f"the backend is closed; {where}"
        else:
            try:
                source = await self._run_in_worker(self._resolve_credential_source)
            except TimeoutError:
                detail = f"looking up AWS credentials timed out after {self._timeout_s:g}s; {where}"
            except Exception as error:
                detail = (
                    f"loading AWS credentials failed ({type(error).__name__}: {error}); {where}; "
                    f"fix: {CREDENTIALS_FIX}"
                )
            else:
                if source is None:
                    detail = f"no AWS credentials found; {where}; fix: {CREDENTIALS_FIX}"
                else:
                    detail = f"AWS credentials found (source={source}); {where}"

        ready = source is not None
        if ready != self._last_probe_ready:
            level = logging.INFO if ready else logging.WARNING
            logger.log(level, "bedrock_probe ready=%s detail=%r", ready, detail)
            self._last_probe_ready = ready
        extra = {"region": self._region, "credential_source": source or "none"}
        if self._endpoint_url:
            extra["endpoint_url"] = self._endpoint_url
        return BackendStatus(
            backend=BACKEND_NAME,
            model_name=self.model_name,
            ready=ready,
            detail=detail,
            extra=extra,
        )

    async def aclose(self) -> None:
        """Stop the worker threads and close the HTTP connection pool.

        Calls still running in a worker are abandoned: they stop before their next
        attempt, and their callers get a BackendUnavailable or BackendTimeout.
        """
        if self._closed:
            return
        self._closed = True
        for call in list(self._calls):
            call.abandoned.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        client = self._client
        if client is not None:
            client.close()
        logger.info("bedrock_backend_closed model=%s region=%s", self.model_name, self._region)

    async def _converse(self, call: _Call, request: dict[str, Any]) -> Mapping[str, Any]:
        if self._closed:
            raise BackendUnavailable(BACKEND_NAME, f"the backend for {self.model_name} is closed")
        self._calls.add(call)
        try:
            return await self._run_in_worker(self._converse_blocking, call, request)
        except TimeoutError:
            raise BackendTimeout(
                BACKEND_NAME,
                f"model {self.model_name} in region {self._region} did not answer within "
                f"{self._timeout_s:g}s (attempts={call.attempts}, last_error={call.last_error})",
            ) from None
        finally:
            call.abandoned.set()
            self._calls.discard(call)

    async def _run_in_worker(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function` on the thread pool under the deadline; raises TimeoutError past it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await loop.run_in_executor(self._executor, function, *args)
        except asyncio.CancelledError:
            # aclose() cancels queued work, which must not look like a cancelled caller.
            task = asyncio.current_task()
            if self._closed and task is not None and task.cancelling() == 0:
                raise BackendUnavailable(
                    BACKEND_NAME, f"the backend for {self.model_name} closed during the call"
                ) from None
            raise

    def _converse_blocking(self, call: _Call, request: dict[str, Any]) -> Mapping[str, Any]:
        self._local.call = call
        try:
            if call.abandoned.is_set() or time.monotonic() >= call.deadline:
                raise _CallAbandoned()
            return self._get_client().converse(**request)
        except _CallAbandoned:
            raise BackendTimeout(
                BACKEND_NAME, f"the call to {self.model_name} was abandoned at its deadline"
            ) from None
        except Exception as error:
            if isinstance(error, NoCredentialsError | PartialCredentialsError):
                # The client keeps the credentials it was built with, so rebuild it next time.
                self._forget_client()
            raise translate_error(error, model_id=self.model_name, region=self._region) from error
        finally:
            self._local.call = None

    def _resolve_credential_source(self) -> str | None:
        with self._lock:
            credentials = self._get_session().get_credentials()
        if credentials is None:
            return None
        # Temporary credentials refresh here when they are about to expire.
        credentials.get_frozen_credentials()
        return credentials.method or "unknown"

    def _get_session(self) -> boto3.session.Session:
        # The caller holds self._lock.
        if self._session is None:
            self._session = boto3.session.Session(region_name=self._region)
        return self._session

    def _get_client(self) -> BaseClient:
        with self._lock:
            if self._client is None:
                self._client = self._create_client()
            return self._client

    def _create_client(self) -> BaseClient:
        client = self._get_session().client(
            _SERVICE,
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            config=self._config,
        )
        client.meta.events.register(f"before-send.{_CONVERSE_EVENT_SUFFIX}", self._on_before_send)
        client.meta.events.register(
            f"response-received.{_CONVERSE_EVENT_SUFFIX}", self._on_response_received
        )
        logger.info(
            "bedrock_client_created model=%s region=%s endpoint_url=%s",
            self.model_name,
            self._region,
            self._endpoint_url or "default",
        )
        return client

    def _forget_client(self) -> None:
        with self._lock:
            self._client = None

    def _on_before_send(self, **kwargs: Any) -> None:
        """Count attempts, log retries and stop a call whose deadline has passed."""
        call: _Call | None = getattr(self._local, "call", None)
        if call is None:
            return
        if call.abandoned.is_set() or time.monotonic() >= call.deadline:
            raise _CallAbandoned()
        call.attempts += 1
        if call.attempts > 1:
            logger.info(
                "bedrock_retry model=%s attempt=%d max_attempts=%d previous_error=%s",
                self.model_name,
                call.attempts,
                self._max_attempts,
                call.last_error,
            )

    def _on_response_received(
        self,
        parsed_response: Mapping[str, Any] | None = None,
        exception: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        call: _Call | None = getattr(self._local, "call", None)
        if call is None:
            return
        if exception is not None:
            call.last_error = type(exception).__name__
        elif parsed_response and "Error" in parsed_response:
            call.last_error = parsed_response["Error"].get("Code")
        else:
            call.last_error = None


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
