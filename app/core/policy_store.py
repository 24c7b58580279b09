"""Stores of the delegation policy's state: this process's memory, or Redis for a fleet.

With several replicas, each one deciding on its own window would drift on its
own traffic, and the fleet as a whole could exceed the delegation budget. The
Redis store keeps one window and one budget for all of them. Each decision
(record the confidence, read the threshold, check and count the budget) is one
Lua script, which Redis runs atomically. So concurrent replicas neither
overshoot the budget nor lose an update.

When Redis cannot be reached, a replica decides with its local policy, which
has mirrored every decision it took through Redis and so starts warm. It
tries Redis again after `retry_s`. A Redis that comes back empty (restarted without persistence)
is seeded from the local window, so the fleet does not warm up from nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.domain.delegation import (
    DelegationConfig,
    DelegationDecision,
    DelegationPolicy,
    DelegationReason,
)

__all__ = [
    "LocalPolicyStore",
    "PolicyStore",
    "RedisPolicyStore",
    "StoreStatus",
    "connect_redis",
]

logger = logging.getLogger(__name__)

REDIS_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The store the policy uses, and whether it is reachable."""

    backend: str  # "memory" or "redis"
    shared: bool  # True while decisions go through the shared store
    detail: str | None = None


class PolicyStore(Protocol):
    """The delegation policy as the planner uses it."""

    async def decide(self, confidence: float, *, plan_valid: bool = True) -> DelegationDecision: ...

    def snapshot(self) -> tuple[float, float, int]:
        """Return the latest threshold, delegated share and sample count."""
        ...

    async def probe(self) -> StoreStatus: ...


class LocalPolicyStore:
    """The policy in this process's memory: right for a single process."""

    def __init__(self, policy: DelegationPolicy) -> None:
        self.policy = policy

    async def decide(self, confidence: float, *, plan_valid: bool = True) -> DelegationDecision:
        return self.policy.decide(confidence, plan_valid=plan_valid)

    def snapshot(self) -> tuple[float, float, int]:
        return self.policy.snapshot()

    async def probe(self) -> StoreStatus:
        return StoreStatus(backend="memory", shared=False)


def connect_redis(url: str, timeout_s: float) -> redis.Redis:
    """Return a client that fails fast: no retries, short timeouts.

    A slow Redis would hold up every request, so after `timeout_s` the local
    policy decides instead.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )


class RedisPolicyStore:
    """The policy's window and budget in Redis, shared by every replica.

    The client belongs to the caller, who closes it.
    """

    def __init__(
        self,
        client: redis.Redis,
        config: DelegationConfig,
        *,
        key_prefix: str,
        local: DelegationPolicy,
        retry_s: float = REDIS_RETRY_S,
    ) -> None:
        self.client = client
        self.config = config
        self.local = local
        self.retry_s = retry_s
        # One hash tag, so that every key lands on the same slot of a Redis Cluster.
        tag = f"{{{key_prefix}:policy}}"
        self.keys = [f"{tag}:arrival", f"{tag}:confidences", f"{tag}:decisions", f"{tag}:counters"]
        self._script = client.register_script(_DECIDE_SCRIPT)
        self._config_args = [
            config.window_size,
            repr(float(config.percentile)),
            repr(float(config.max_ratio)),
            config.ratio_window,
            config.min_samples,
            repr(float(config.warmup_threshold)),
        ]
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._last_error: str | None = None
        self._last_snapshot: tuple[float, float, int] | None = None

    @property
    def shared(self) -> bool:
        """True unless the last call to Redis failed."""
        return self._down_since is None

    async def seed(self, confidences: list[float]) -> None:
        """Replay `confidences` into the shared state, unless a replica has set it up."""
        try:
            await self._run("seed", *(repr(float(value)) for value in confidences))
        except (RedisError, OSError) as error:
            self._mark_down(error)
        else:
            self._mark_up()

    async def decide(self, confidence: float, *, plan_valid: bool = True) -> DelegationDecision:
        """Decide through Redis; with Redis unreachable, through the local policy."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return self.local.decide(confidence, plan_valid=plan_valid)
        try:
            decision = await self._decide_shared(confidence, plan_valid)
        except (RedisError, OSError) as error:
            self._mark_down(error)
            return self.local.decide(confidence, plan_valid=plan_valid)
        self._mark_up()
        self.local.observe(decision.confidence, decision.delegate)
        samples_after = min(decision.samples + 1, self.config.window_size)
        self._last_snapshot = (decision.threshold, decision.ratio, samples_after)
        return decision

    def snapshot(self) -> tuple[float, float, int]:
        if self._down_since is None and self._last_snapshot is not None:
            return self._last_snapshot
        return self.local.snapshot()

    async def probe(self) -> StoreStatus:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            self._mark_down(error)
        else:
            if self._down_since is not None:
                # Reachable again: the next request goes to Redis without waiting.
                self._retry_at = 0.0
        if self._down_since is None:
            return StoreStatus(backend="redis", shared=True)
        return StoreStatus(
            backend="redis",
            shared=False,
            detail=f"Redis unreachable, deciding with local state: {self._last_error}",
        )

    async def _decide_shared(self, confidence: float, plan_valid: bool) -> DelegationDecision:
        confidence = float(confidence)
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be a number in [0, 1], got {confidence!r}")
        reply = await self._run("decide", repr(confidence), int(plan_valid))
        if reply[0] == "empty":
            # No replica has set the state up, or Redis lost it (a restart without
            # persistence): refill it from the local window, which mirrors the fleet's.
            await self._run("seed", *(repr(value) for value in self.local.recent_confidences()))
            reply = await self._run("decide", repr(confidence), int(plan_valid))
        delegate, reason, threshold, delegated, decisions, samples, warming_up, sequence = reply
        return DelegationDecision(
            delegate=bool(int(delegate)),
            reason=DelegationReason(reason),
            confidence=confidence,
            threshold=float(threshold),
            ratio=int(delegated) / int(decisions),
            samples=int(samples),
            warming_up=bool(int(warming_up)),
            store="redis",
            sequence=int(sequence),
        )

    async def _run(self, mode: str, *values: object) -> list:
        return await self._script(keys=self.keys, args=[mode, *self._config_args, *values])

    def _mark_down(self, error: Exception) -> None:
        self._last_error = f"{type(error).__name__}: {error}"
        self._retry_at = time.monotonic() + self.retry_s
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "redis unreachable, delegation policy uses local state error=%s retry_s=%s",
                self._last_error,
                self.retry_s,
            )

    def _mark_up(self) -> None:
        if self._down_since is not None:
            logger.info(
                "redis reachable again, delegation policy shared outage_s=%.1f",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
            self._last_error = None


# The same algorithm as DelegationPolicy.decide, on Redis structures:
#   KEYS[1] arrival:     list of sample ids, oldest first (the confidence window)
#   KEYS[2] confidences: sorted set, sample id -> confidence (for the percentile)
#   KEYS[3] decisions:   list of "1"/"0", oldest first (the budget window)
#   KEYS[4] counters:    hash with the next sample id and the delegated count
# ARGV: mode ("decide" or "seed"), window_size, percentile, max_ratio, ratio_window,
# min_samples, warmup_threshold, then the confidence and plan_valid ("decide") or
# the confidences to replay ("seed", only into state that no replica has set up).
# Numbers cross as strings: Redis would truncate a Lua number in a reply to an integer,
# and "%.17g" (the sorted set's score format) and Python's repr round-trip exactly.
_DECIDE_SCRIPT = """
local window_size = tonumber(ARGV[2])
local percentile = tonumber(ARGV[3])
local max_ratio = tonumber(ARGV[4])
local ratio_window = tonumber(ARGV[5])
local min_samples = tonumber(ARGV[6])
local warmup = ARGV[7]

local function decide(confidence, plan_valid)
  local samples = redis.call('ZCARD', KEYS[2])
  local warming_up = samples < min_samples
  local threshold = warmup
  if not warming_up then
    local rank = math.ceil(percentile / 100 * samples)
    if rank < 1 then rank = 1 end
    threshold = redis.call('ZRANGE', KEYS[2], rank - 1, rank - 1, 'WITHSCORES')[2]
  end

  local delegated = tonumber(redis.call('HGET', KEYS[4], 'delegated') or '0')
  local decisions = redis.call('LLEN', KEYS[3])
  local delegate, reason
  if plan_valid and tonumber(confidence) > tonumber(threshold) then
    delegate, reason = false, 'above_threshold'
  else
    local full = decisions >= ratio_window
    local slides_out = 0
    if full and redis.call('LINDEX', KEYS[3], 0) == '1' then slides_out = 1 end
    local delegated_after = delegated + 1 - slides_out
    local decisions_after = decisions
    if not full then decisions_after = decisions + 1 end
    if delegated_after <= max_ratio * decisions_after + 1e-9 then
      delegate, reason = true, plan_valid and 'low_confidence' or 'invalid_plan'
    else
      delegate, reason = false, 'budget_exhausted'
    end
  end

  while redis.call('LLEN', KEYS[1]) >= window_size do
    redis.call('ZREM', KEYS[2], redis.call('LPOP', KEYS[1]))
  end
  local id = redis.call('HINCRBY', KEYS[4], 'next_id', 1)
  redis.call('RPUSH', KEYS[1], id)
  redis.call('ZADD', KEYS[2], confidence, id)

  while redis.call('LLEN', KEYS[3]) >= ratio_window do
    if redis.call('LPOP', KEYS[3]) == '1' then
      redis.call('HINCRBY', KEYS[4], 'delegated', -1)
    end
  end
  redis.call('RPUSH', KEYS[3], delegate and '1' or '0')
  if delegate then redis.call('HINCRBY', KEYS[4], 'delegated', 1) end
  return {delegate and '1' or '0', reason, threshold,
          redis.call('HGET', KEYS[4], 'delegated') or '0',
          tostring(redis.call('LLEN', KEYS[3])), tostring(samples),
          warming_up and '1' or '0', tostring(id)}
end

-- The "seeded" field marks state that some replica has set up. Without it, Redis
-- has lost its data (or never had any): "decide" asks the caller to seed first.
if ARGV[1] == 'seed' then
  if redis.call('HEXISTS', KEYS[4], 'seeded') == 1 then return {'kept'} end
  for i = 8, #ARGV do decide(ARGV[i], true) end
  redis.call('HSET', KEYS[4], 'seeded', '1')
  return {'seeded'}
end
if redis.call('HEXISTS', KEYS[4], 'seeded') == 0 then return {'empty'} end
return decide(ARGV[8], ARGV[9] == '1')
"""
