"""A worker process that takes delegation decisions through the shared Redis store.

The fleet test starts several of these on one Redis. Each takes confidences
from a common queue until it gets None, then returns its decisions.
"""

from __future__ import annotations

import asyncio
import multiprocessing.synchronize
from multiprocessing import Queue
from typing import Any

from app.core.policy_store import RedisPolicyStore, connect_redis
from app.domain.delegation import DelegationConfig, DelegationPolicy

__all__ = ["decide_from_queue"]


def decide_from_queue(
    redis_url: str,
    key_prefix: str,
    config: dict[str, Any],
    tasks: Queue,
    results: Queue,
    start: multiprocessing.synchronize.Event,
) -> None:
    """Decide for each (index, confidence) in `tasks`; put the list of decisions in `results`."""
    results.put(asyncio.run(_decide_all(redis_url, key_prefix, config, tasks, start)))


async def _decide_all(
    redis_url: str,
    key_prefix: str,
    config: dict[str, Any],
    tasks: Queue,
    start: multiprocessing.synchronize.Event,
) -> list[tuple]:
    policy_config = DelegationConfig(**config)
    client = connect_redis(redis_url, timeout_s=5.0)
    store = RedisPolicyStore(
        client, policy_config, key_prefix=key_prefix, local=DelegationPolicy(policy_config)
    )
    start.wait()
    decided = []
    try:
        while (task := tasks.get()) is not None:
            index, confidence = task
            decision = await store.decide(confidence)
            decided.append(
                (
                    index,
                    decision.sequence,
                    decision.store,
                    decision.delegate,
                    str(decision.reason),
                    decision.threshold,
                    decision.ratio,
                )
            )
    finally:
        await client.aclose()
    return decided
