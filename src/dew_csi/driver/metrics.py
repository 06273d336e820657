"""Prometheus metrics of the driver, with the upstream driver's names and labels.

Labels carry providers, outcomes and error types only, never pod, secret or file names.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

OS_TYPE: Final = "linux"
# Upstream: ExponentialBucketsRange(0.1, 2, 11)
BUCKETS: Final = (
    0.1,
    0.1866,
    0.3482,
    0.6498,
    1.2126,
    2.2627,
    4.2224,
    7.8793,
    14.7033,
    27.4374,
    51.2,
)


class DriverMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.node_publish = Counter(
            "node_publish", "Successful publishes", ["os_type", "provider"], registry=r
        )
        self.node_unpublish = Counter(
            "node_unpublish", "Successful unpublishes", ["os_type"], registry=r
        )
        self.node_publish_error = Counter(
            "node_publish_error",
            "Failed publishes",
            ["os_type", "provider", "error_type"],
            registry=r,
        )
        self.node_unpublish_error = Counter(
            "node_unpublish_error", "Failed unpublishes", ["os_type"], registry=r
        )
        self.rotation_reconcile = Counter(
            "rotation_reconcile", "Remounts done", ["os_type", "provider", "rotated"], registry=r
        )
        self.rotation_reconcile_error = Counter(
            "rotation_reconcile_error",
            "Remounts failed",
            ["os_type", "provider", "error_type", "rotated"],
            registry=r,
        )
        self.rotation_reconcile_duration = Histogram(
            "rotation_reconcile_duration_sec",
            "Time to remount one volume",
            ["os_type"],
            buckets=BUCKETS,
            registry=r,
        )
        self.k8s_secret_duration = Histogram(
            "k8s_secret_duration_sec",
            "Time to sync the Kubernetes Secrets of one volume",
            ["os_type"],
            buckets=BUCKETS,
            registry=r,
        )

    def published(self, provider: str) -> None:
        self.node_publish.labels(OS_TYPE, provider).inc()

    def publish_failed(self, provider: str, error_type: str) -> None:
        self.node_publish_error.labels(OS_TYPE, provider, error_type).inc()

    def unpublished(self) -> None:
        self.node_unpublish.labels(OS_TYPE).inc()

    def unpublish_failed(self) -> None:
        self.node_unpublish_error.labels(OS_TYPE).inc()

    def rotation_done(self, provider: str, *, rotated: bool) -> None:
        self.rotation_reconcile.labels(OS_TYPE, provider, str(rotated).lower()).inc()

    def rotation_failed(self, provider: str, error_type: str) -> None:
        self.rotation_reconcile_error.labels(OS_TYPE, provider, error_type, "true").inc()

    def rotation_duration(self, seconds: float) -> None:
        self.rotation_reconcile_duration.labels(OS_TYPE).observe(seconds)

    def secret_sync_duration(self, seconds: float) -> None:
        self.k8s_secret_duration.labels(OS_TYPE).observe(seconds)
