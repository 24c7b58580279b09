"""POST /api/inference/generate-plan."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from app.api.auth import limit_rate, require_scope
from app.api.errors import problem_response
from app.api.schemas import (
    DelegationInfo,
    FewShotExample,
    PlanRequest,
    PlanResponse,
    ProblemDetails,
)
from app.core.logging import request_id_var
from app.core.metrics import ServiceMetrics
from app.core.response_cache import ResponseCache, request_key
from app.domain.dialogue import Turn
from app.planner import Planner, PlanResult

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/inference", tags=["plans"])

DISCONNECT_POLL_S = 0.25
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned; never seen by it

_ERRORS = {
    status: {
        "model": ProblemDetails,
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
        },
    }
    for status, description in {
        400: "The body is not valid JSON.",
        401: "API keys are configured and the request has none, or an invalid one.",
        403: "The API key lacks the generate scope.",
        413: "The body is larger than MAX_BODY_BYTES.",
        429: "Too many requests from this key or address; retry after Retry-After seconds.",
        422: "A field is missing, of the wrong type, empty or over its limit.",
        502: (
            "A model answered with an error, without a plan, or with a plan that fails "
            "the plan check (which is never returned)."
        ),
        503: "No model backend could be reached; retry after the Retry-After seconds.",
        504: "The model backend timed out.",
    }.items()
}


@router.post(
    "/generate-plan",
    response_model=PlanResponse,
    responses=_ERRORS,
    dependencies=[Depends(require_scope("generate")), Depends(limit_rate)],
    summary="Turn an utterance into a plan",
)
async def generate_plan(body: PlanRequest, request: Request) -> Response:
    """Return the small model's plan, or the large model's when the small one is unsure."""
    # Read directly rather than through a dependency: each one costs a resolution step.
    planner: Planner = request.app.state.planner
    context = [Turn(turn.utterance, turn.plan, turn.agent_reply) for turn in body.context]
    metrics: ServiceMetrics = request.app.state.metrics
    cache: ResponseCache | None = request.app.state.response_cache
    cache_key = None
    if cache is not None:
        started = time.perf_counter()
        cache_key = request_key(request.app.state.response_namespace, body.utterance, context)
        stored = await cache.get(cache_key)
        if stored is not None and not _valid_cached(stored):
            stored = None
        metrics.cache_lookups.labels("miss" if stored is None else "hit").inc()
        if stored is not None:
            milliseconds = (time.perf_counter() - started) * 1000
            request.state.log_fields = (
                f"cached=true model={stored.get('model')} origin={stored.get('origin')}"
            )
            return _cached_response(stored, milliseconds, metrics)
    generation = asyncio.ensure_future(planner.generate(body.utterance, context))
    if not await _finished_before_disconnect(generation, request):
        logger.info("client disconnected, plan generation cancelled")
        return problem_response(
            CLIENT_CLOSED_REQUEST, "Client closed request", "The client disconnected."
        )
    result = generation.result()
    if result.plan_problem is not None:
        return _refuse_unchecked_plan(result, metrics)
    response = _to_response(result)
    content = response.model_dump()
    _record(metrics, result, planner)
    if cache_key is not None and _cacheable(result):
        await cache.put(
            cache_key,
            {name: value for name, value in content.items() if name not in _PER_REQUEST_FIELDS},
        )
    # Appended to the request's one log line (RequestIdMiddleware), not a line of its own.
    request.state.log_fields = (
        f"model={response.model} backend={response.backend} origin={response.origin} "
        f"confidence={response.confidence} delegated={response.delegated} "
        f"delegation_status={response.delegation.status} reason={response.delegation.reason} "
        f"threshold={response.delegation.threshold} ratio={response.delegation.ratio} "
        f"store={response.delegation.store} total_ms={result.timings_ms.get('total')}"
    )
    return JSONResponse(content)


# Fields that describe this request rather than its plan; a cached response gets new ones.
_PER_REQUEST_FIELDS = {"request_id", "timings_ms", "cached"}


def _refuse_unchecked_plan(result: PlanResult, metrics: ServiceMetrics) -> Response:
    """Return a 502 problem instead of a plan that fails the plan check.

    Such a plan is malformed, or uses functions or arguments that no bank
    example uses. A model writes one when it follows instructions injected into
    the utterance, or when it invents names. The plan is never returned,
    whatever it contains, and the client never sees its function names,
    because they may be the injected text.
    """
    metrics.fallbacks.labels("plan_rejected").inc()
    logger.warning(
        "plan rejected: it fails the plan check model=%s problem=%s delegation_status=%s",
        result.model,
        result.plan_problem,
        result.delegation_status,
    )
    return problem_response(
        502,
        "No valid plan",
        "The model's plan fails the plan check, and neither a similar example nor the "
        "large model offered one that passes; the service log has the reason under this "
        "request id. Rephrase the request, or retry when the large model is available.",
    )


def _cacheable(result: PlanResult) -> bool:
    """Return True when the same request would get the same plan: no failure changed its route."""
    return (
        result.fallback is None
        and result.delegation_status in ("not_wanted", "completed")
        and result.plan_problem is None
    )


def _valid_cached(stored: dict[str, Any]) -> bool:
    """Return True when a cached body is a whole plan response; a shared store may hold anything."""
    try:
        PlanResponse.model_validate({**stored, "request_id": "", "timings_ms": {}})
    except ValidationError as error:
        logger.warning("invalid cache entry ignored errors=%d", error.error_count())
        return False
    return True


def _cached_response(
    stored: dict[str, Any], milliseconds: float, metrics: ServiceMetrics
) -> JSONResponse:
    body = {
        **stored,
        "request_id": request_id_var.get() or "",
        "cached": True,
        "timings_ms": {"cache": round(milliseconds, 3), "total": round(milliseconds, 3)},
    }
    metrics.answers.labels("cache", str(stored.get("model"))).inc()
    return JSONResponse(body)


def _record(metrics: ServiceMetrics, result: PlanResult, planner: Planner) -> None:
    """Count the answer, its stages, its delegation and any fallback."""
    metrics.answers.labels(result.origin, result.model).inc()
    for stage, milliseconds in result.timings_ms.items():
        metrics.stage_latency.labels(stage).observe(milliseconds / 1000)
    if result.decision is not None:
        metrics.delegations.labels(str(result.decision.reason), result.delegation_status).inc()
    if result.fallback:
        metrics.fallbacks.labels(result.fallback).inc()
    if result.delegation_status in ("unavailable", "failed"):
        metrics.fallbacks.labels(f"large_model_{result.delegation_status}").inc()
    if result.decision is not None:
        metrics.policy_decisions.labels(result.decision.store).inc()
        metrics.policy_store_shared.set(1 if result.decision.store == "redis" else 0)
    threshold, ratio, _ = planner.policy.snapshot()
    metrics.delegation_threshold.set(threshold)
    metrics.delegation_ratio.set(ratio)


async def _finished_before_disconnect(work: asyncio.Future, request: Request) -> bool:
    """Wait for `work`; cancel it and return False if the client disconnects first.

    Starlette does not cancel a handler when its client goes away, and a plan can
    take seconds of model time that a queue of abandoned requests would waste.
    """
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if done:
                return True
            if await request.is_disconnected():
                return False
    finally:
        if not work.done():
            work.cancel()


def _to_response(result: PlanResult) -> PlanResponse:
    decision = result.decision
    delegation = DelegationInfo(
        wanted=decision.delegate if decision else True,
        status=result.delegation_status,
        reason=str(decision.reason) if decision else None,
        threshold=round(decision.threshold, 6) if decision else None,
        ratio=round(decision.ratio, 6) if decision else None,
        samples=decision.samples if decision else None,
        warming_up=decision.warming_up if decision else None,
        store=decision.store if decision else None,
        error=result.delegation_error,
    )
    return PlanResponse(
        request_id=request_id_var.get() or "",
        plan=result.plan,
        plan_valid=result.plan_problem is None,
        plan_problem=result.plan_problem,
        model=result.model,
        backend=result.backend,
        model_name=result.model_name,
        origin=result.origin,
        origin_example_id=result.origin_example_id,
        confidence=None if result.confidence is None else round(result.confidence, 6),
        confidence_source=result.confidence_source,
        calibration_version=result.calibration_version,
        delegated=result.model == "large",
        delegation=delegation,
        small_plan=result.small_plan if result.model == "large" else None,
        generated_plan=(result.generated_plan if result.generated_plan != result.plan else None),
        generated_plan_problem=result.generated_problem or result.small_error,
        fallback=result.fallback,
        few_shot=[
            FewShotExample(
                id=scored.example.id,
                utterance=scored.example.utterance,
                similarity=round(scored.similarity, 6),
            )
            for scored in result.few_shot
        ],
        timings_ms=result.timings_ms,
    )
