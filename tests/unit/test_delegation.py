import random
import threading

import pytest

from app.domain.delegation import DelegationConfig, DelegationPolicy, DelegationReason


def make_policy(**overrides) -> DelegationPolicy:
    config = dict(
        window_size=100,
        percentile=20.0,
        max_ratio=0.2,
        ratio_window=100,
        min_samples=20,
        warmup_threshold=0.3,
    )
    config.update(overrides)
    return DelegationPolicy(DelegationConfig(**config))


def test_cold_start_does_not_delegate_everything():
    policy = make_policy()

    decisions = [policy.decide(0.1) for _ in range(10)]

    delegated = sum(decision.delegate for decision in decisions)
    assert delegated <= 2  # 20% of 10
    assert not decisions[0].delegate


def test_warm_up_uses_configured_threshold():
    policy = make_policy()

    decision = policy.decide(0.9)

    assert decision.warming_up
    assert decision.threshold == 0.3
    assert decision.reason is DelegationReason.ABOVE_THRESHOLD


def test_percentile_threshold_after_warm_up():
    policy = make_policy(min_samples=10, window_size=10)
    for value in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]:
        policy.decide(value)

    decision = policy.decide(0.5)

    assert not decision.warming_up
    assert decision.threshold == 0.2  # nearest rank: the 2nd of 10 sorted values


def test_low_confidence_is_delegated_within_budget():
    policy = make_policy(min_samples=10, window_size=10)
    for value in [0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65, 0.75, 0.85, 0.95]:
        policy.decide(value)

    decision = policy.decide(0.1)

    assert decision.delegate
    assert decision.reason is DelegationReason.LOW_CONFIDENCE


def test_threshold_excludes_current_confidence():
    policy = make_policy(min_samples=5, window_size=5, warmup_threshold=0.0)
    for value in [0.6, 0.7, 0.8, 0.9, 1.0]:
        policy.decide(value)

    decision = policy.decide(0.65)

    assert decision.threshold == 0.6
    assert not decision.delegate


def test_ties_stay_within_budget():
    policy = make_policy(min_samples=10)

    decisions = [policy.decide(0.5) for _ in range(1000)]

    delegated = sum(decision.delegate for decision in decisions)
    assert delegated == pytest.approx(200, abs=1)
    assert max(decision.ratio for decision in decisions[100:]) <= 0.2 + 1e-9


def test_ratio_never_exceeds_budget_in_window():
    policy = make_policy(min_samples=10, ratio_window=50)
    rng = random.Random(7)

    decisions = [policy.decide(rng.random() ** 3) for _ in range(2000)]

    assert max(decision.ratio for decision in decisions) <= 0.2 + 1e-9


def test_no_burst_after_window_slides():
    # The first design reset its counter to zero, which let the next requests all
    # through. A sliding window lets old delegations out one at a time.
    policy = make_policy(min_samples=10, ratio_window=100)
    for _ in range(300):
        policy.decide(0.0)

    next_hundred = [policy.decide(0.0).delegate for _ in range(100)]

    longest_run = max(
        len(run) for run in "".join("D" if d else "." for d in next_hundred).split(".")
    )
    assert sum(next_hundred) == 20
    assert longest_run <= 1


def test_invalid_plan_delegated_above_threshold():
    policy = make_policy(min_samples=10)
    for _ in range(10):
        policy.decide(0.5)

    decision = policy.decide(0.9, plan_valid=False)

    assert decision.delegate
    assert decision.reason is DelegationReason.INVALID_PLAN


def test_invalid_plans_respect_budget():
    policy = make_policy(min_samples=10)
    for _ in range(10):
        policy.decide(0.9)

    decisions = [policy.decide(0.9, plan_valid=False) for _ in range(20)]

    assert sum(decision.delegate for decision in decisions) == 6  # 6 of 30 is 20%
    assert DelegationReason.BUDGET_EXHAUSTED in {decision.reason for decision in decisions}


def test_budget_exhausted_reason():
    policy = make_policy(min_samples=10)
    for _ in range(10):
        policy.decide(0.9)
    first, second = policy.decide(0.0), policy.decide(0.0)  # shares 1/11 and 2/12

    decision = policy.decide(0.0)  # 3/13 would exceed 0.2

    assert first.delegate and second.delegate
    assert not decision.delegate
    assert decision.reason is DelegationReason.BUDGET_EXHAUSTED


def test_zero_budget_never_delegates():
    policy = make_policy(max_ratio=0.0)

    assert not any(policy.decide(0.0).delegate for _ in range(100))


def test_window_is_bounded():
    policy = make_policy(window_size=50, min_samples=10)
    for _ in range(500):
        policy.decide(0.9)
    for _ in range(50):
        policy.decide(0.1)

    threshold, _, samples = policy.snapshot()

    assert samples == 50
    assert threshold == 0.1


def test_seed_confidences_warm_the_window():
    policy = DelegationPolicy(
        DelegationConfig(window_size=100, min_samples=10),
        seed_confidences=[i / 100 for i in range(100)],
    )

    decision = policy.decide(0.5)

    assert not decision.warming_up
    assert decision.threshold == 0.19


def test_seed_confidences_fill_the_budget_window():
    rng = random.Random(5)
    config = DelegationConfig(window_size=200, ratio_window=200, min_samples=50)
    policy = DelegationPolicy(config, seed_confidences=[rng.random() for _ in range(200)])

    decisions = [policy.decide(rng.random()) for _ in range(200)]

    delegated = sum(decision.delegate for decision in decisions)
    assert decisions[0].ratio > 0.1  # the seeds' decisions count from the first request
    assert 20 <= delegated <= 40
    assert max(decision.ratio for decision in decisions) <= 0.2 + 1e-9


def test_concurrent_decisions_keep_counts_consistent():
    policy = make_policy(window_size=1000, ratio_window=1000, min_samples=10)
    rng = random.Random(3)
    values = [rng.random() for _ in range(8000)]
    results = []
    lock = threading.Lock()

    def worker(chunk):
        local = [policy.decide(value) for value in chunk]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker, args=(values[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    _, ratio, samples = policy.snapshot()
    delegated_recent = policy._delegated
    assert len(results) == 8000
    assert samples == 1000
    assert delegated_recent == sum(policy._decisions)
    assert ratio <= 0.2 + 1e-9


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", None])
def test_invalid_confidence_is_rejected(value):
    with pytest.raises(ValueError, match="confidence must be a number"):
        make_policy().decide(value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"percentile": 0}, "percentile"),
        ({"max_ratio": 1.5}, "max_ratio"),
        ({"min_samples": 500}, "min_samples"),
    ],
)
def test_invalid_config_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_policy(**overrides)
