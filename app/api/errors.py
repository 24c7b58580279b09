"""One error format for every failure: RFC 9457 problem details with the request id."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.schemas import ContextTurn, PlanRequest, ProblemDetails
from app.core.logging import request_id_var
from app.planner import PlanUnavailableError

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = "5"


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build a problem-details response carrying the current request id."""
    body = ProblemDetails(
        title=title, status=status, detail=detail, request_id=request_id_var.get(), errors=errors
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _malformed_json() -> JSONResponse:
    return problem_response(
        400,
        "Malformed JSON",
        "The request body is not valid JSON: send a JSON object such as "
        '{"utterance": "What is on my calendar today?"} with Content-Type: application/json.',
    )


def _field_path(location: tuple) -> str:
    # ("body", "context", 0, "utterance") -> "context[0].utterance"
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return _malformed_json()
        location = tuple(error.get("loc", ()))
        errors.append({"field": _field_path(location), "message": _message(error, location)})
    detail = "; ".join(f"{error['field']}: {error['message']}" for error in errors)
    return problem_response(422, "Invalid request", detail, errors=errors)


def _message(error: dict, location: tuple) -> str:
    kind = error.get("type")
    if kind == "missing":
        return "Field required"
    if kind == "extra_forbidden":
        model = ContextTurn if "context" in location else PlanRequest
        return f"Unknown field: remove it (allowed: {', '.join(model.model_fields)})"
    if location == ("body",) and kind in ("model_attributes_type", "dict_type"):
        return (
            "The body must be a JSON object, sent with Content-Type: application/json, "
            'such as {"utterance": "What is on my calendar today?"}'
        )
    # Pydantic prefixes the text of a custom validator's ValueError with "Value error, ".
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:
        # FastAPI raises this for a body it cannot decode at all (invalid UTF-8, nesting
        # too deep for the JSON parser).
        return _malformed_json()
    title = {
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not found",
        405: "Method not allowed",
        413: "Request body too large",
        429: "Too many requests",
    }.get(exc.status_code, "Request failed")
    return problem_response(
        exc.status_code, title, str(exc.detail), headers=getattr(exc, "headers", None)
    )


async def _plan_unavailable(request: Request, exc: PlanUnavailableError) -> JSONResponse:
    # The client gets one sentence per failed model. The backends' own messages name
    # hosts, model ids, regions and credential set-up, so they go to the log only.
    detail = " ".join(
        [
            "No model produced a usable plan.",
            *exc.public_errors,
            "The service log has the details under this request id.",
        ]
    )
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.status_code == 503 else None
    title = {503: "Model backends unavailable", 504: "Model backend timed out"}.get(
        exc.status_code, "Model backend failed"
    )
    logger.warning(
        "plan unavailable status=%s errors=%s",
        exc.status_code,
        "; ".join(f"{backend}: {error}" for backend, error in exc.backend_errors.items()),
    )
    return problem_response(exc.status_code, title, detail, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error path=%s", request.url.path)
    return problem_response(
        500,
        "Internal server error",
        "The service failed unexpectedly; the error is logged under this request id.",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem details."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(PlanUnavailableError, _plan_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
