"""Prometheus metrics of the provider: CSMS requests, cache use, mounts.

Labels carry operations, outcomes and cache kinds only: never a secret name, value or identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from dew_csi.provider.cache import CacheStats

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _CacheCollector(Collector):
    def __init__(self, stats: CacheStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dew_provider_cache_lookups",
            "Secret reads answered by the provider cache, by kind (pinned, latest, coalesced) "
            "or sent to CSMS (miss).",
            labels=["result"],
        )
        family.add_metric(["pinned_hit"], self._stats.pinned_hits)
        family.add_metric(["latest_hit"], self._stats.latest_hits)
        family.add_metric(["coalesced"], self._stats.coalesced)
        family.add_metric(["miss"], self._stats.misses)
        yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


class ProviderMetrics:
    def __init__(self, cache_stats: CacheStats, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.csms_requests = Counter(
            "dew_provider_csms_requests",
            "HTTP attempts to CSMS by operation and outcome.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.csms_latency = Histogram(
            "dew_provider_csms_request_duration_seconds",
            "Latency of HTTP attempts to CSMS by operation.",
            ["operation"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.mounts = Counter(
            "dew_provider_mount",
            "Mount requests served, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.mount_latency = Histogram(
            "dew_provider_mount_duration_seconds",
            "Time to serve a Mount request.",
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_CacheCollector(cache_stats))

    def observe_csms_attempt(self, operation: str, outcome: str, seconds: float) -> None:
        self.csms_requests.labels(operation, outcome).inc()
        self.csms_latency.labels(operation).observe(seconds)

    def observe_mount(self, outcome: str, seconds: float) -> None:
        self.mounts.labels(outcome).inc()
        self.mount_latency.observe(seconds)
