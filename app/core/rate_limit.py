"""A per-client token bucket: each client may make `burst` requests at once, refilled steadily."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

__all__ = ["RateLimiter", "SharedRateLimiter"]

logger = logging.getLogger(__name__)

REDIS_RETRY_S = 1.0


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

    async def take(self, client: str) -> float:
        """Take a token for `client`, as `acquire` does; the interface SharedRateLimiter shares."""
        return self.acquire(client)

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """Format a wait as a Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(wait_s)))


class SharedRateLimiter:
    """The same token buckets in Redis, so that all replicas and workers share each limit.

    One Lua script refills and takes from a bucket atomically, on Redis's clock.
    When Redis fails, this process's own buckets (`local`) decide instead, and
    each replica then admits up to the whole limit on its own.
    """

    def __init__(self, client: redis.Redis, local: RateLimiter, *, key_prefix: str) -> None:
        self.client = client
        self.local = local
        self.rate = local.rate
        self.burst = local.burst
        self.prefix = f"{key_prefix}:ratelimit:"
        # A bucket left alone this long is full again, so Redis may forget it.
        self._ttl_ms = math.ceil((self.burst / self.rate + 1) * 1000)
        self._script = client.register_script(_TAKE_TOKEN_SCRIPT)
        self._failing = False
        self._retry_at = 0.0

    async def take(self, client: str) -> float:
        """Take a token for `client`; return 0 when granted, else the seconds until one is."""
        if self._failing and time.monotonic() < self._retry_at:
            return self.local.acquire(client)  # Redis is left alone a second after a failure
        try:
            wait = await self._script(
                keys=[self.prefix + client], args=[repr(self.rate), self.burst, self._ttl_ms]
            )
        except (RedisError, OSError) as error:
            self._retry_at = time.monotonic() + REDIS_RETRY_S
            if not self._failing:
                logger.warning(
                    "rate limit falls back to this process's buckets, Redis failed error=%s",
                    f"{type(error).__name__}: {error}",
                )
            self._failing = True
            return self.local.acquire(client)
        if self._failing:
            logger.info("rate limit shared through Redis again")
        self._failing = False
        return float(wait)


_TAKE_TOKEN_SCRIPT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(bucket[1]) or burst
local updated = tonumber(bucket[2]) or t
tokens = math.min(burst, tokens + math.max(0, t - updated) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(t))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tostring(wait)
"""
