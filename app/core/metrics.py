"""Prometheus metrics of one service instance, in its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["KNOWN_PATHS", "ServiceMetrics"]

# Paths reported by name; any other path is counted as "other", so that a client
# probing random URLs cannot create unbounded label values.
KNOWN_PATHS = frozenset({"/api/inference/generate-plan", "/health", "/ready", "/metrics"})
# Seconds: from a bank answer (about a millisecond) to a slow embedded generation.
_LATENCY_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)


class ServiceMetrics:
    """The counters, histograms and gauges that /metrics exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "plan_http_requests",
            "HTTP requests by path and status code.",
            ["path", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "plan_http_request_duration_seconds",
            "HTTP request latency by path.",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "plan_stage_duration_seconds",
            "Latency of each stage of a plan request: retrieval, small_model, large_model, total.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "plan_answers",
            "Answered plan requests by the origin of the returned plan and the model that ran.",
            ["origin", "model"],
            registry=self.registry,
        )
        self.delegations = Counter(
            "plan_delegations",
            "Delegation decisions by reason and outcome status.",
            ["reason", "status"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "plan_fallbacks",
            "Requests whose route changed because a backend failed, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "plan_rate_limited_requests",
            "Plan requests refused by the rate limit.",
            registry=self.registry,
        )
        self.delegation_ratio = Gauge(
            "plan_delegation_ratio",
            "Share of recent requests delegated to the large model.",
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "plan_response_cache_lookups",
            "Response-cache lookups by result: hit or miss.",
            ["result"],
            registry=self.registry,
        )
        self.policy_decisions = Counter(
            "plan_delegation_store_decisions",
            "Delegation decisions by the store that took them: redis, or memory (one "
            "process, or a replica deciding alone while Redis is unreachable).",
            ["store"],
            registry=self.registry,
        )
        self.policy_store_shared = Gauge(
            "plan_delegation_store_shared",
            "1 while the delegation policy is shared through Redis; 0 when it is local, "
            "by configuration or because Redis is unreachable.",
            registry=self.registry,
        )
        self.delegation_threshold = Gauge(
            "plan_delegation_threshold",
            "The confidence at or below which a request is delegated now.",
            registry=self.registry,
        )

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        label = path if path in KNOWN_PATHS else "other"
        self.requests.labels(label, str(status)).inc()
        self.request_latency.labels(label).observe(seconds)
