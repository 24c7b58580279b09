"""A per-client token bucket: each client may make `burst` requests at once, refilled steadily."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token buckets by client name, thread-safe, forgetting the least recently seen clients.

    A bucket has at most `burst` tokens and gains `per_minute / 60` a second;
    each request takes one. At most `max_clients` buckets are kept: a client
    whose bucket was dropped starts again with a full one.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be positive and burst at least 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        """Take a token for `client`; return 0 when granted, else the seconds until one is."""
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """Format a wait as a Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait_s)))
