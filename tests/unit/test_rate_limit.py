"""The per-client token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from app.core.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_wait():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)

    granted = [limiter.acquire("a") for _ in range(3)]
    rejected = limiter.acquire("a")

    assert granted == [0.0, 0.0, 0.0]
    assert rejected == pytest.approx(1.0)


def test_tokens_refill_with_time():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, clock=clock)
    limiter.acquire("a")

    clock.now += 1.0

    assert limiter.acquire("a") == 0.0


def test_clients_have_separate_buckets():
    limiter = RateLimiter(per_minute=60, burst=1, clock=Clock())
    limiter.acquire("a")

    assert limiter.acquire("b") == 0.0
    assert limiter.acquire("a") > 0


def test_least_recent_client_is_forgotten():
    limiter = RateLimiter(per_minute=60, burst=1, max_clients=2, clock=Clock())
    for client in ("a", "b", "c"):
        limiter.acquire(client)

    assert limiter.acquire("a") == 0.0  # dropped, so it starts with a full bucket
    assert limiter.acquire("c") > 0


def test_retry_after_rounds_up():
    assert RateLimiter.retry_after(0.2) == "1"
    assert RateLimiter.retry_after(2.1) == "3"


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="per_minute"):
        RateLimiter(per_minute=0, burst=1)
