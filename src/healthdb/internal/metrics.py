"""Prometheus metrics and in-process latency summaries.

Label values are operation names, kinds, strategies and outcome codes only — validated
identifiers chosen by the programmer, never data — so no PHI can reach a label.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class QueryMetrics:
    """Counters and histograms for one DatabaseService (its own registry)."""

    def __init__(self, *, registry: CollectorRegistry | None = None, window: int = 2048) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.duration = Histogram(
            "healthdb_operation_seconds",
            "Facade operation latency",
            ["operation", "kind", "strategy", "outcome"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "healthdb_cache_requests", "Query cache lookups", ["result"], registry=self.registry
        )
        self.cache_hits = self.cache.labels("hit")
        self.retries = Counter(
            "healthdb_retries", "Transaction re-runs", ["reason"], registry=self.registry
        )
        self.slow = Counter(
            "healthdb_slow_statements", "Statements over the slow threshold", registry=self.registry
        )
        self.critical = Counter(
            "healthdb_critical_operations", "Break-glass lane uses", registry=self.registry
        )
        # Never labelled by clinic: unbounded cardinality (the clinic id is in the log line).
        self.rate_limited = Counter(
            "healthdb_rate_limited",
            "Requests refused over a clinic's budget",
            ["backend"],
            registry=self.registry,
        )
        self.rate_limit_fallbacks = Counter(
            "healthdb_rate_limit_backend_switches",
            "Rate limiter switches between Redis and the per-process fallback",
            ["to"],
            registry=self.registry,
        )
        self.rate_limit_exempt = Counter(
            "healthdb_rate_limit_exempt",
            "Break-glass calls, exempt from rate limits",
            ["over_budget"],
            registry=self.registry,
        )
        self.pool_in_use = Gauge(
            "healthdb_pool_checked_out", "Connections in use", ["pool"], registry=self.registry
        )
        self._children: dict[tuple[str, str, str, str], Any] = {}
        self._recent: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))

    def observe(
        self, *, operation: str, kind: str, strategy: str, outcome: str, seconds: float
    ) -> None:
        key = (operation, kind, strategy, outcome)
        child = self._children.get(key)
        if child is None:  # labels() takes a lock and builds a tuple: do it once per series
            child = self._children[key] = self.duration.labels(*key)
        child.observe(seconds)
        self._recent[f"{kind}:{operation}"].append(seconds)

    def latency(self) -> dict[str, LatencySummary]:
        """Percentiles over the most recent calls of each operation."""
        return {
            name: _summarise(list(samples)) for name, samples in self._recent.items() if samples
        }


def _summarise(samples: list[float]) -> LatencySummary:
    if len(samples) == 1:
        ms = samples[0] * 1000
        return LatencySummary(1, ms, ms, ms)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return LatencySummary(len(samples), cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000)
