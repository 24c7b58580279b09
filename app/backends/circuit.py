"""A circuit breaker in front of a model backend: a dead server costs milliseconds, not timeouts.

After `failure_threshold` consecutive calls fail because the backend is
unreachable or timed out, the circuit opens: calls fail at once with
BackendUnavailable for `reset_after_s` seconds. Then one call is let through;
its success closes the circuit, its failure opens it again. Errors caused by a
request itself (a prompt too long, a bad response) do not reflect the
server's health and are not counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from app.backends.base import BackendStatus, ChatMessage, Completion, ModelBackend
from app.backends.errors import BackendTimeout, BackendUnavailable

logger = logging.getLogger(__name__)

__all__ = ["CircuitBreakerBackend"]


class CircuitBreakerBackend:
    """A ModelBackend wrapper that stops calling a backend that keeps failing to respond."""

    def __init__(
        self,
        inner: ModelBackend,
        *,
        failure_threshold: int = 3,
        reset_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError("failure_threshold must be at least 1 and reset_after_s positive")
        self.inner = inner
        self.backend = inner.backend
        self.model_name = inner.model_name
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        """closed, open or half_open."""
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """Call the backend unless the circuit is open; count its connection failures."""
        state = self.state
        if state == "open" or (state == "half_open" and self._trial_running):
            retry_in = self.reset_after_s - (self._clock() - (self._opened_at or 0.0))
            raise BackendUnavailable(
                self.backend,
                f"circuit open after {self._failures} failed calls to {self.model_name}; "
                f"the next try is in {max(retry_in, 0.0):.0f} s",
            )
        self._trial_running = state == "half_open"
        try:
            completion = await self.inner.complete(messages, max_tokens=max_tokens)
        except (BackendUnavailable, BackendTimeout) as error:
            self._record_failure(error)
            raise
        finally:
            self._trial_running = False
        if self._opened_at is not None:
            logger.info("circuit closed backend=%s model=%s", self.backend, self.model_name)
        self._failures = 0
        self._opened_at = None
        return completion

    def _record_failure(self, error: Exception) -> None:
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            # Logged when the circuit opens or a trial call fails, not again for each
            # call that was already in flight when it opened.
            opening = self._opened_at is None or self._trial_running
            self._opened_at = self._clock()
            if not opening:
                return
            logger.warning(
                "circuit open backend=%s model=%s failures=%d reset_after_s=%g error=%s",
                self.backend,
                self.model_name,
                self._failures,
                self.reset_after_s,
                error,
            )

    async def probe(self) -> BackendStatus:
        """Probe the backend itself, whatever the circuit's state, and add the state to `extra`."""
        status = await self.inner.probe()
        return BackendStatus(
            backend=status.backend,
            model_name=status.model_name,
            ready=status.ready,
            detail=status.detail,
            extra={**status.extra, "circuit": self.state},
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
