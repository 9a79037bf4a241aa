"""Metrics through ``prometheus_client``, in a registry of their own.

Keeps :class:`flows.metrics.Metrics`' contract: every metric of
:mod:`flows.metrics.names` is created up front in this instance's
:class:`~prometheus_client.CollectorRegistry` (not the library's global one,
so tests and jobs never collide on a name), and the same checks run before
``prometheus_client`` sees a call.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from flows.metrics.names import LATENCY_BUCKETS, SPECS, MetricError, Spec, check

# No `<name>_created` series beside every counter and histogram: the process start is
# what they would say, and they double what a scrape carries.
disable_created_metrics()  # type: ignore[no-untyped-call]


class PrometheusMetrics:
    """:class:`flows.metrics.Metrics` on ``prometheus_client`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics: dict[str, Any] = {
            name: _create(spec, self.registry) for name, spec in SPECS.items()
        }

    def count(self, name: str, value: float = 1.0, /, **labels: str) -> None:
        check(name, "counter", labels)
        if value < 0:
            raise MetricError(f"{name} is a counter: it cannot go down by {value}")
        self._child(name, labels).inc(value)

    def set(self, name: str, value: float, /, **labels: str) -> None:
        check(name, "gauge", labels)
        self._child(name, labels).set(value)

    def observe(self, name: str, value: float, /, **labels: str) -> None:
        check(name, "histogram", labels)
        self._child(name, labels).observe(value)

    def read(self, name: str, /, **labels: str) -> float:
        spec = SPECS.get(name)
        check(name, spec.kind if spec is not None else "counter", labels)
        assert spec is not None  # check() raised otherwise
        sample = {"counter": name, "gauge": name, "histogram": f"{name}_count"}[spec.kind]
        found = self.registry.get_sample_value(sample, dict(labels))
        return 0.0 if found is None else float(found)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def _child(self, name: str, labels: dict[str, str]) -> Any:
        metric = self._metrics[name]
        return metric.labels(**labels) if labels else metric


def _create(spec: Spec, registry: CollectorRegistry) -> Any:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=LATENCY_BUCKETS)
