"""Metrics and health of tetik's jobs (SPEC section 12): one interface, two implementations.

Rules of this interface:

* :class:`Metrics` is what the jobs call: ``count`` a counter up, ``set`` a
  gauge, ``observe`` a histogram, each by a name of
  :mod:`flows.metrics.names` with exactly its labels (anything else raises
  :class:`~flows.metrics.names.MetricError`). ``read`` gives a sample back (a
  counter's or gauge's value, a histogram's number of observations; 0 for one
  never touched) and ``exposition`` the Prometheus text format. Every method
  is thread-safe.
* Two implementations keep the same contract (``tests/flows/metrics``):
  :class:`flows.metrics.memory.MemoryMetrics` (plain dicts, the default of
  every process, and the one of unit tests) and
  :class:`flows.metrics.prometheus.PrometheusMetrics` (``prometheus_client``,
  a registry of its own), which a job installs when it serves a port.
* Callers count per batch, not per event, and never in a way that can fail
  the batch: the counts that drive the engine stay in Redis
  (``{prefix}:stats``), these are their copy for Prometheus.
* The process has one installed instance (:func:`installed`), as logging has
  one root logger: the code that meets Redis or Kafka faults deep inside
  (:mod:`flows.retry`, the Kafka source) counts through it without being
  handed one. A job that serves metrics calls :func:`install` before it
  builds anything.
* ``tetik collect`` and any other job reuse the same pieces: declare its
  metrics in :mod:`flows.metrics.names`, call
  :func:`flows.metrics.http.serve_job` with the port and the job's readiness
  checks (it installs a :class:`~flows.metrics.prometheus.PrometheusMetrics`
  and serves ``/metrics``, ``/healthz`` and ``/readyz``), beat the returned
  :class:`~flows.metrics.health.Health` from the job's loop, and count
  through :func:`installed`.
"""

from __future__ import annotations

import threading
from typing import Protocol

from flows.metrics.memory import MemoryMetrics


class Metrics(Protocol):
    """Counters, gauges and histograms by declared name (see the module rules)."""

    def count(self, name: str, value: float = 1.0, /, **labels: str) -> None:
        """Add ``value`` (>= 0) to a counter."""
        ...

    def set(self, name: str, value: float, /, **labels: str) -> None:
        """Set a gauge."""
        ...

    def observe(self, name: str, value: float, /, **labels: str) -> None:
        """Add one observation to a histogram."""
        ...

    def read(self, name: str, /, **labels: str) -> float:
        """A counter's or gauge's value, a histogram's observation count (0 if untouched)."""
        ...

    def exposition(self) -> tuple[bytes, str]:
        """Every metric in the Prometheus text format, and its content type."""
        ...


_lock = threading.Lock()
_installed: Metrics = MemoryMetrics()


def install(metrics: Metrics) -> Metrics:
    """Make ``metrics`` the process's instance; returns it."""
    global _installed
    with _lock:
        _installed = metrics
    return metrics


def installed() -> Metrics:
    """The process's instance (a :class:`MemoryMetrics` until a job installs another)."""
    return _installed
