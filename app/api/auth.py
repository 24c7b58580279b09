"""API-key checks for the routes: Authorization: Bearer KEY, or X-API-Key: KEY."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.core.api_keys import ApiKey, find_key
from app.core.rate_limit import RateLimiter, SharedRateLimiter

logger = logging.getLogger(__name__)

# auto_error=False: a missing key is this module's decision, so that keys stay optional.
_bearer = HTTPBearer(auto_error=False, description="An API key from `plan-keys create`.")
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key from `plan-keys create`."
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="plan-service"'}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
# OpenAPI entries for the routes that require a key.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "API keys are configured and the request has none, or an invalid one.",
        "content": _PROBLEM,
    },
    403: {"description": "The API key lacks the route's scope.", "content": _PROBLEM},
}


def require_scope(scope: str) -> Callable[..., Awaitable[None]]:
    """Return a dependency that admits a request whose key has `scope`.

    With no key configured (API_KEYS empty), every request is admitted.
    """

    async def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> None:
        keys: list[ApiKey] = request.app.state.api_keys
        if not keys:
            return
        authorization = request.headers.get("authorization")
        if authorization is not None and bearer is None:
            # An Authorization header of another scheme is a credential the service cannot
            # check: rejected, instead of falling back to X-API-Key.
            raise HTTPException(
                401, "Authorization must be 'Bearer KEY' with an API key.", headers=_CHALLENGE
            )
        presented = bearer.credentials if bearer is not None else header
        if not presented:
            raise HTTPException(
                401,
                "Missing API key: send it as Authorization: Bearer KEY or as X-API-Key: KEY.",
                headers=_CHALLENGE,
            )
        key = find_key(keys, presented)
        if key is None:
            logger.warning("request with an invalid API key path=%s", request.url.path)
            raise HTTPException(401, "Invalid API key.", headers=_CHALLENGE)
        if scope not in key.scopes:
            logger.warning(
                "API key lacks scope key=%s scope=%s path=%s", key.name, scope, request.url.path
            )
            raise HTTPException(
                403,
                f"The API key '{key.name}' lacks the '{scope}' scope: create a key with "
                f"`plan-keys create NAME --scopes {scope}`.",
            )
        request.state.api_key_name = key.name

    return check


async def limit_rate(request: Request) -> None:
    """Admit the request if its client's bucket has a token; else raise a 429."""
    limiter: RateLimiter | SharedRateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    key_name = getattr(request.state, "api_key_name", None)
    client = f"key:{key_name}" if key_name else f"address:{_address(request)}"
    wait_s = await limiter.take(client)
    if wait_s > 0:
        request.app.state.metrics.rate_limited.inc()
        logger.warning("rate limited client=%s retry_after_s=%.1f", client, wait_s)
        raise HTTPException(
            429,
            f"Too many requests: the limit is {limiter.rate * 60:g} a minute with bursts of "
            f"{limiter.burst}. Retry after the Retry-After seconds.",
            headers={"Retry-After": RateLimiter.retry_after(wait_s)},
        )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
