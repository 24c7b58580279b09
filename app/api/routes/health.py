"""GET /health (liveness), GET /ready (readiness) and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.auth import AUTH_ERRORS, require_scope
from app.api.schemas import (
    BackendReadiness,
    HealthResponse,
    PolicyStoreReadiness,
    ReadinessResponse,
)
from app.planner import Planner

router = APIRouter(tags=["health"])


# HEAD is registered after GET (decorators apply bottom-up), so that a 405 for another
# method takes its Allow header from the documented GET route.
@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """Return 200 while the process runs, checking nothing else."""
    return HealthResponse()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses=AUTH_ERRORS,
    dependencies=[Depends(require_scope("metrics"))],
)
async def metrics(request: Request) -> PlainTextResponse:
    """Return the service's metrics in the Prometheus text format."""
    metrics = request.app.state.metrics
    # Read at scrape time: decisions alone would leave it stale through a quiet outage.
    store = await request.app.state.planner.policy.probe()
    metrics.policy_store_shared.set(1 if store.shared else 0)
    return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/ready",
    response_model=ReadinessResponse,
    responses={
        503: {"model": ReadinessResponse, "description": "The small model cannot answer."},
        **AUTH_ERRORS,
    },
    summary="Readiness",
    dependencies=[Depends(require_scope("metrics"))],
)
async def ready(request: Request) -> JSONResponse:
    """Report the state of each backend, with status 503 when the small model cannot answer.

    The large model being down is not fatal: the small model's plans are
    returned and the responses say that delegation was unavailable. Nor is
    Redis: the replica decides with its own state, and `policy_store` reports it.
    """
    planner: Planner = request.app.state.planner
    backends = [("small", planner.small)]
    if planner.large is not None:
        backends.append(("large", planner.large))
    statuses = await asyncio.gather(*(backend.probe() for _, backend in backends))
    store = await planner.policy.probe()

    threshold, ratio, _ = planner.policy.snapshot()
    body = ReadinessResponse(
        ready=statuses[0].ready,
        backends=[
            BackendReadiness(
                role=role,
                backend=status.backend,
                model_name=status.model_name,
                ready=status.ready,
                detail=status.detail,
            )
            for (role, _), status in zip(backends, statuses, strict=True)
        ],
        examples=len(planner.index),
        delegation_threshold=threshold,
        delegation_ratio=ratio,
        policy_store=PolicyStoreReadiness(
            backend=store.backend, shared=store.shared, detail=store.detail
        ),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
