"""ASGI middleware: request ids, request logging and the body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import problem_response
from app.core.logging import request_id_var

logger = logging.getLogger("app.access")

# A client-supplied id is echoed into logs and headers, so only safe ids are kept.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Give each request an id (the client's valid X-Request-ID, or a new one) and log it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        supplied = _header(scope, b"x-request-id")
        request_id = (
            supplied if supplied and _VALID_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        )
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Handled here, while the request id is still set: Starlette's outermost
            # handler runs after this middleware has reset it.
            if response_started:
                raise
            logger.exception("unhandled error path=%s", scope["path"])
            response = problem_response(
                500,
                "Internal server error",
                "The service failed unexpectedly; the error is logged under this request id.",
            )
            await response(scope, receive, send_with_id)
        finally:
            metrics = getattr(scope["app"].state, "metrics", None) if "app" in scope else None
            if metrics is not None:
                metrics.observe_request(scope["path"], status, time.perf_counter() - started)
            # A route may add its own fields (the plan route: model, delegation), so that
            # each request is one log line.
            fields = scope.get("state", {}).get("log_fields")
            logger.info(
                "request method=%s path=%s status=%s latency_ms=%.1f%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                f" {fields}" if fields else "",
                extra={"status": status, "path": scope["path"]},
            )
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BodySizeLimitMiddleware:
    """Reject with a 413 a request whose body is larger than `max_bytes`.

    A Content-Length over the limit is rejected before the body is read. A
    chunked body is counted as it arrives; once over the limit, the route's
    own response is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return

        received = 0
        too_large = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    # The route gets an empty, final body, and its response is replaced.
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if too_large:
                if message["type"] == "http.response.start":
                    replaced = True
                    await self._reject(send)
                return  # the route's own response is dropped
            await send(message)

        await self.app(scope, counting_receive, replacing_send)

    async def _reject(self, send: Send) -> None:
        logger.warning("request body too large max_bytes=%d", self.max_bytes)
        response = problem_response(
            413,
            "Request body too large",
            f"The request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES): "
            "send a shorter utterance or fewer context turns.",
        )
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": response.body})
