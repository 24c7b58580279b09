"""Build the FastAPI application: `python -m app` or `uvicorn app.main:create_app --factory`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio as redis
from fastapi import FastAPI
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import RETRY_AFTER_SECONDS, install_error_handlers, problem_response
from app.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from app.api.routes import health, plans
from app.api.schemas import PlanResponse
from app.backends.base import ModelBackend
from app.backends.factory import build_large_backend, build_small_backend
from app.core.api_keys import parse_api_keys
from app.core.config import Settings, get_settings
from app.core.garbage_collection import serving_garbage_collector
from app.core.logging import configure_logging
from app.core.metrics import ServiceMetrics
from app.core.policy_store import LocalPolicyStore, PolicyStore, RedisPolicyStore, connect_redis
from app.core.rate_limit import RateLimiter, SharedRateLimiter
from app.core.response_cache import (
    MemoryResponseCache,
    RedisResponseCache,
    ResponseCache,
    cache_namespace,
)
from app.core.tracing import configure_tracing
from app.domain.calibration import Calibration, CalibrationError, load_calibration
from app.domain.delegation import DelegationConfig, DelegationPolicy
from app.domain.example_bank import bank_arguments, bank_functions, load_bank
from app.domain.prompts import PROMPT_VERSION
from app.domain.retrieval import ExampleIndex
from app.planner import Planner

logger = logging.getLogger(__name__)


def build_policy(settings: Settings, calibration: Calibration | None = None) -> DelegationPolicy:
    """Create the delegation policy; a calibration's confidence sample warms up its window."""
    config = DelegationConfig(
        window_size=settings.delegation_window_size,
        percentile=settings.delegation_percentile,
        max_ratio=settings.delegation_max_ratio,
        ratio_window=settings.delegation_ratio_window,
        min_samples=settings.delegation_min_samples,
        warmup_threshold=settings.delegation_warmup_threshold,
    )
    return DelegationPolicy(config, seed_confidences=_seed_sample(settings, calibration))


def _seed_sample(settings: Settings, calibration: Calibration | None) -> list[float]:
    sample = list(calibration.confidence_sample) if calibration else []
    # The latest values last, as if they had just been seen.
    return sample[-settings.delegation_window_size :]


async def build_policy_store(
    settings: Settings, calibration: Calibration | None, redis_client: redis.Redis | None
) -> PolicyStore:
    """Create the policy in this process, or in Redis when a client is given.

    In Redis, the calibration's sample seeds a state that no replica has set up yet.
    """
    local = build_policy(settings, calibration)
    if redis_client is None:
        return LocalPolicyStore(local)
    store = RedisPolicyStore(
        redis_client, local.config, key_prefix=settings.redis_key_prefix, local=local
    )
    await store.seed(_seed_sample(settings, calibration))
    status = await store.probe()
    logger.info(
        "delegation policy store=redis shared=%s key_prefix=%s detail=%s",
        status.shared,
        settings.redis_key_prefix,
        status.detail,
    )
    return store


async def check_redis_credentials(client: redis.Redis) -> None:
    """Raise RuntimeError when Redis rejects REDIS_URL's credentials.

    An unreachable Redis is a passing outage that local state covers. Wrong
    credentials are a configuration error that would leave every replica on
    its own budget for good, so the start fails.
    """
    try:
        await client.ping()
    except AuthenticationError as error:
        raise RuntimeError(
            f"REDIS_URL: Redis rejected the credentials ({error}): set the password in "
            "REDIS_URL as redis://:PASSWORD@HOST:PORT/DB"
        ) from None
    except ResponseError as error:
        if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
            raise RuntimeError(
                f"REDIS_URL: Redis rejected the credentials ({error}): set the password in "
                "REDIS_URL as redis://:PASSWORD@HOST:PORT/DB"
            ) from None
        raise
    except (RedisError, OSError) as error:
        logger.warning("redis unreachable at start-up, local state for now error=%s", error)


def build_response_cache(
    settings: Settings, redis_client: redis.Redis | None
) -> ResponseCache | None:
    """Create the response cache: in Redis when a client is given; None when the TTL is 0."""
    if settings.response_cache_ttl_s == 0:
        return None
    if redis_client is not None:
        return RedisResponseCache(
            redis_client, settings.response_cache_ttl_s, key_prefix=settings.redis_key_prefix
        )
    return MemoryResponseCache(settings.response_cache_ttl_s, settings.response_cache_max_entries)


def response_namespace(settings: Settings, planner: Planner) -> str:
    """Return what, besides the request, decides a response: the cache key's namespace."""
    return cache_namespace(
        {
            "prompt_version": PROMPT_VERSION,
            "small_model": [planner.small.backend, planner.small.model_name],
            "large_model": (
                [planner.large.backend, planner.large.model_name] if planner.large else None
            ),
            "bank": planner.index.fingerprint(),
            "calibration": planner.calibration.version if planner.calibration else None,
            # A release that changes the response's fields must not serve the old ones.
            "response_schema": PlanResponse.model_json_schema(),
            "settings": settings.model_dump(
                include={
                    "few_shot_k",
                    "bank_answer_similarity",
                    "candidate_count",
                    "small_model_context_turns",
                    "small_model_max_tokens",
                    "large_model_max_tokens",
                }
            ),
        }
    )


def load_configured_calibration(settings: Settings) -> Calibration | None:
    """Load CALIBRATION_PATH, if set; raise CalibrationError saying how to fix an unusable file."""
    if settings.calibration_path is None:
        return None
    try:
        calibration = load_calibration(settings.calibration_path)
    except CalibrationError as error:
        raise CalibrationError(
            f"{error}: fix the file, write a new one with plan-calibrate, or leave "
            "CALIBRATION_PATH empty"
        ) from error
    logger.info(
        "calibration loaded path=%s version=%s confidence_sample=%d",
        settings.calibration_path,
        calibration.version,
        len(calibration.confidence_sample),
    )
    return calibration


def warn_if_fitted_elsewhere(calibration: Calibration | None, small: ModelBackend) -> None:
    """Warn when the calibration was fitted with another small model: its figures differ."""
    if calibration is None:
        return
    fitted_model = calibration.fitted_on.get("small_model")
    if fitted_model and fitted_model != small.model_name:
        logger.warning(
            "calibration was fitted with another small model version=%s fitted_model=%s "
            "model=%s: its confidences may be off; run plan-calibrate again",
            calibration.version,
            fitted_model,
            small.model_name,
        )


def build_planner(
    settings: Settings,
    index: ExampleIndex,
    small: ModelBackend,
    large: ModelBackend | None,
    calibration: Calibration | None = None,
    policy: PolicyStore | None = None,
) -> Planner:
    """Create the planner the service uses, from the settings and started backends.

    Without `policy`, the delegation policy lives in this process.
    """
    return Planner(
        index=index,
        small=small,
        large=large,
        policy=policy or LocalPolicyStore(build_policy(settings, calibration)),
        few_shot_k=settings.few_shot_k,
        small_max_tokens=settings.small_model_max_tokens,
        small_context_turns=settings.small_model_context_turns,
        large_max_tokens=settings.large_model_max_tokens,
        known_functions=bank_functions(index.examples),
        known_arguments=bank_arguments(index.examples),
        bank_answer_similarity=settings.bank_answer_similarity,
        candidate_count=settings.candidate_count,
        calibration=calibration,
    )


async def _log_backend_status(small: ModelBackend, large: ModelBackend | None) -> None:
    """Probe each backend once at start-up, so a missing one shows in the first log lines."""
    status = await small.probe()
    if status.ready:
        logger.info("small model ready backend=%s detail=%s", status.backend, status.detail)
    else:
        logger.error(
            "small model NOT ready backend=%s detail=%s: plan requests fail and /ready "
            "answers 503 until it is",
            status.backend,
            status.detail,
        )
    if large is None:
        logger.warning("no large model configured (LARGE_MODEL_BACKEND=none): nothing is delegated")
        return
    status = await large.probe()
    if status.ready:
        logger.info("large model ready backend=%s detail=%s", status.backend, status.detail)
    else:
        logger.warning(
            "large model NOT ready backend=%s detail=%s: delegated requests get the small "
            "model's plan",
            status.backend,
            status.detail,
        )


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _warn_if_open(settings: Settings, keys: list) -> None:
    """Warn loudly when the service listens beyond this machine and needs no key."""
    if keys:
        logger.info("API keys required keys=%d", len(keys))
    elif settings.host not in _LOOPBACK_HOSTS:
        logger.warning(
            "NO API KEYS: the service listens on host=%s and anyone who can reach it can "
            "generate plans, at the large model's cost. Create keys with `plan-keys create` "
            "and set API_KEYS",
            settings.host,
        )


class ShutdownCancellationMiddleware:
    """Return a 503 for a request that the server cancels while it shuts down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            # Uvicorn cancels the requests still running when SHUTDOWN_GRACE_S runs out and
            # sends each a bare 500. A 503 tells the client that a retry can succeed
            # elsewhere. The cancellation is not raised again, because the request's task
            # ends here and uvicorn would only log it as an application error.
            if response_started:
                raise
            logger.warning("request cancelled by shutdown path=%s status=503", scope["path"])
            response = problem_response(
                503,
                "Service shutting down",
                "The service stopped before the plan was ready: retry the request.",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
            await response(scope, receive, send)


BackendFactory = Callable[[Settings], Awaitable[tuple[ModelBackend, ModelBackend | None]]]


async def build_backends(settings: Settings) -> tuple[ModelBackend, ModelBackend | None]:
    """Start the small and large backends that the settings name."""
    return await build_small_backend(settings), build_large_backend(settings)


def create_app(
    settings: Settings | None = None, *, backend_factory: BackendFactory = build_backends
) -> FastAPI:
    """Create the application; backends start in its lifespan, not here.

    `backend_factory` lets a benchmark or an embedding program bring its own
    backends; the service uses the ones its settings name.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format)
        tracer_provider = configure_tracing()
        examples = load_bank(settings.examples_path)
        index = ExampleIndex(examples)
        logger.info("example bank loaded path=%s examples=%d", settings.examples_path, len(index))

        # A bad calibration file stops the start before any model loads.
        calibration = load_configured_calibration(settings)
        small, large = await backend_factory(settings)
        logger.info(
            "backends configured small_backend=%s small_model=%s large_backend=%s large_model=%s",
            small.backend,
            small.model_name,
            large.backend if large else "none",
            large.model_name if large else "-",
        )
        await _log_backend_status(small, large)
        warn_if_fitted_elsewhere(calibration, small)
        app.state.settings = settings
        redis_client = (
            connect_redis(settings.redis_url, settings.redis_timeout_s)
            if settings.redis_url
            else None
        )
        if redis_client is not None:
            await check_redis_credentials(redis_client)
        policy = await build_policy_store(settings, calibration, redis_client)
        app.state.planner = build_planner(settings, index, small, large, calibration, policy)
        app.state.response_cache = build_response_cache(settings, redis_client)
        local_limiter = app.state.local_rate_limiter
        if redis_client is not None and local_limiter is not None:
            app.state.rate_limiter = SharedRateLimiter(
                redis_client, local_limiter, key_prefix=settings.redis_key_prefix
            )
        app.state.response_namespace = response_namespace(settings, app.state.planner)
        _warn_if_open(settings, app.state.api_keys)
        try:
            with serving_garbage_collector():
                yield
        finally:
            await small.aclose()
            if large is not None:
                await large.aclose()
            if redis_client is not None:
                await redis_client.aclose()
            if tracer_provider is not None:
                tracer_provider.shutdown()  # exports the spans still buffered
            logger.info("service stopped")

    app = FastAPI(
        title="Plan service",
        version="0.1.0",
        summary="Turns calendar-assistant utterances into SMCalFlow plans.",
        description=(
            "A small local model answers first; its least confident answers are delegated "
            "to a large model. Errors use RFC 9457 problem details."
        ),
        lifespan=lifespan,
    )
    app.state.api_keys = parse_api_keys(settings.api_keys)
    app.state.metrics = ServiceMetrics()
    # In this process until the lifespan shares it through Redis, when REDIS_URL is set.
    app.state.local_rate_limiter = (
        RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        if settings.rate_limit_per_minute > 0
        else None
    )
    app.state.rate_limiter = app.state.local_rate_limiter
    # Added first, so it runs inside RequestIdMiddleware and its 413 has a request id.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Inside RequestIdMiddleware, so its 503 has a request id and is logged.
    app.add_middleware(ShutdownCancellationMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(plans.router)
    app.include_router(health.router)
    return app
