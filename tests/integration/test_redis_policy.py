"""The delegation policy in a real Redis: one process, a fleet of four, and outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import random

import pytest

from app.core.policy_store import RedisPolicyStore, connect_redis
from app.domain.delegation import DelegationConfig, DelegationPolicy
from tests.support.policy_worker import decide_from_queue

CONFIG = dict(window_size=200, ratio_window=200, min_samples=50, percentile=20.0, max_ratio=0.2)
WORKERS = 4


def make_store(url: str, *, prefix: str = "test", retry_s: float = 1.0, **config):
    policy_config = DelegationConfig(**{**CONFIG, **config})
    client = connect_redis(url, timeout_s=1.0)
    store = RedisPolicyStore(
        client,
        policy_config,
        key_prefix=prefix,
        local=DelegationPolicy(policy_config),
        retry_s=retry_s,
    )
    return client, store


def test_store_matches_local_policy(redis_server):
    rng = random.Random(7)
    inputs = [(round(rng.random() ** 2, 2), rng.random() > 0.05) for _ in range(1500)]
    reference = DelegationPolicy(DelegationConfig(**CONFIG), seed_confidences=[0.3, 0.6, 0.9])

    async def run():
        client, store = make_store(redis_server.url)
        await store.seed([0.3, 0.6, 0.9])
        decisions = [await store.decide(value, plan_valid=valid) for value, valid in inputs]
        await client.aclose()
        return decisions

    shared = asyncio.run(run())
    local = [reference.decide(value, plan_valid=valid) for value, valid in inputs]

    assert [(d.delegate, d.reason, d.threshold, d.ratio, d.samples) for d in shared] == [
        (d.delegate, d.reason, d.threshold, d.ratio, d.samples) for d in local
    ]
    assert {d.store for d in shared} == {"redis"}


def test_seed_applies_once(redis_server):
    async def run():
        client, first = make_store(redis_server.url)
        _, second = make_store(redis_server.url)
        await first.seed([0.1] * 60)
        await second.seed([0.9] * 60)  # another replica starting later: state kept
        decision = await second.decide(0.5)
        await client.aclose()
        await second.client.aclose()
        return decision

    decision = asyncio.run(run())

    assert decision.threshold == 0.1
    assert decision.samples == 60


def test_fleet_shares_one_budget(redis_server):
    """Four processes decide on one shuffled sequence through one Redis.

    Every decision is one atomic script, so the fleet's decisions form one
    order (their `sequence`). Replayed in that order, a single in-process
    policy takes exactly the same decisions with the same thresholds. The
    delegated share of every window of `ratio_window` decisions stays within
    the budget with no tolerance: the check and the count happen in the same
    step, so no replica can act on a stale count.
    """
    rng = random.Random(2026)
    confidences = [rng.betavariate(5, 2) for _ in range(2400)]
    rng.shuffle(confidences)

    context = multiprocessing.get_context("spawn")
    tasks, results, start = context.Queue(), context.Queue(), context.Event()
    for index, confidence in enumerate(confidences):
        tasks.put((index, confidence))
    for _ in range(WORKERS):
        tasks.put(None)
    workers = [
        context.Process(
            target=decide_from_queue,
            args=(redis_server.url, "fleet", CONFIG, tasks, results, start),
        )
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    start.set()
    per_worker = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)

    decisions = sorted((d for batch in per_worker for d in batch), key=lambda d: d[1])
    reference = DelegationPolicy(DelegationConfig(**CONFIG))
    replayed = [reference.decide(confidences[d[0]]) for d in decisions]
    delegated = [d[3] for d in decisions]
    worst_share = max(
        sum(delegated[max(0, end - CONFIG["ratio_window"]) : end])
        / min(end, CONFIG["ratio_window"])
        for end in range(1, len(delegated) + 1)
    )

    assert [worker.exitcode for worker in workers] == [0] * WORKERS
    assert [d[1] for d in decisions] == list(range(1, len(confidences) + 1))
    assert {d[2] for d in decisions} == {"redis"}
    assert min(len(batch) for batch in per_worker) > len(confidences) / (4 * WORKERS)
    assert [(d[3], d[4], d[5], d[6]) for d in decisions] == [
        (r.delegate, str(r.reason), r.threshold, r.ratio) for r in replayed
    ]
    assert worst_share <= CONFIG["max_ratio"]
    assert sum(delegated) > 0.15 * len(delegated)  # the budget is used, not just respected


def test_decides_locally_while_redis_is_down(redis_server):
    async def run():
        client, store = make_store(redis_server.url, retry_s=0.2)
        await store.seed([])
        for value in [i / 100 for i in range(100)]:
            await store.decide(value)
        redis_server.kill()
        while_down = await store.decide(0.0)
        status = await store.probe()
        await client.aclose()
        return store, while_down, status

    store, while_down, status = asyncio.run(run())

    assert while_down.store == "memory"
    assert while_down.samples == 100  # the local window mirrored every shared decision
    assert while_down.threshold == pytest.approx(0.19)
    assert status.shared is False
    assert "unreachable" in status.detail


def test_returns_to_redis_and_refills_it(redis_server):
    async def run():
        client, store = make_store(redis_server.url, retry_s=0.2)
        await store.seed([])
        for value in [i / 100 for i in range(100)]:
            await store.decide(value)
        redis_server.kill()
        for _ in range(10):
            await store.decide(0.5)
        redis_server.start()  # empty: nothing was persisted
        await asyncio.sleep(0.25)
        back = await store.decide(0.5)
        status = await store.probe()
        await client.aclose()
        return back, status

    back, status = asyncio.run(run())

    assert back.store == "redis"
    assert back.samples == 110  # refilled from the local window, not warming up from zero
    assert back.warming_up is False
    assert status.shared is True
