"""Metrics in plain dicts: the default of every process and of unit tests.

Keeps :class:`flows.metrics.Metrics`' contract (same names, same errors,
the same text format as ``prometheus_client`` writes) with no registry: a
process that serves no port pays a dict update per batch.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping

from flows.metrics.names import LATENCY_BUCKETS, SPECS, Kind, MetricError, Spec, check

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    """Per-bucket counts (not cumulative), their sum and count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.count += 1
        self.total += value


class MemoryMetrics:
    """:class:`flows.metrics.Metrics` in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}

    def count(self, name: str, value: float = 1.0, /, **labels: str) -> None:
        check(name, "counter", labels)
        if value < 0:
            raise MetricError(f"{name} is a counter: it cannot go down by {value}")
        key = _key(labels)
        with self._lock:
            values = self._values.setdefault(name, {})
            values[key] = values.get(key, 0.0) + value

    def set(self, name: str, value: float, /, **labels: str) -> None:
        check(name, "gauge", labels)
        with self._lock:
            self._values.setdefault(name, {})[_key(labels)] = value

    def observe(self, name: str, value: float, /, **labels: str) -> None:
        check(name, "histogram", labels)
        with self._lock:
            series = self._histograms.setdefault(name, {})
            series.setdefault(_key(labels), _Histogram()).add(value)

    def read(self, name: str, /, **labels: str) -> float:
        spec = _spec(name, labels)
        with self._lock:
            if spec.kind == "histogram":
                found = self._histograms.get(name, {}).get(_key(labels))
                return float(found.count) if found is not None else 0.0
            return float(self._values.get(name, {}).get(_key(labels), 0.0))

    def exposition(self) -> tuple[bytes, str]:
        lines: list[str] = []
        with self._lock:
            for name, spec in SPECS.items():
                lines += _head(spec)
                if spec.kind == "histogram":
                    for key, hist in sorted(self._histograms.get(name, {}).items()):
                        lines += _histogram_lines(name, key, hist)
                else:
                    for key, value in sorted(self._values.get(name, {}).items()):
                        lines.append(f"{name}{_render(key)} {_number(value)}")
        return ("\n".join(lines) + "\n").encode(), CONTENT_TYPE


def _spec(name: str, labels: Mapping[str, str]) -> Spec:
    spec = SPECS.get(name)
    kind: Kind = spec.kind if spec is not None else "counter"
    return check(name, kind, labels)


def _key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _head(spec: Spec) -> list[str]:
    text = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    return [f"# HELP {spec.name} {text}", f"# TYPE {spec.name} {spec.kind}"]


def _histogram_lines(name: str, key: Labels, hist: _Histogram) -> list[str]:
    lines = []
    cumulative = 0
    bounds = [*(_number(b) for b in LATENCY_BUCKETS), "+Inf"]
    for bound, n in zip(bounds, hist.buckets, strict=True):
        cumulative += n
        lines.append(f"{name}_bucket{_render((*key, ('le', bound)))} {cumulative}")
    lines.append(f"{name}_count{_render(key)} {hist.count}")
    lines.append(f"{name}_sum{_render(key)} {_number(hist.total)}")
    return lines


def _render(key: Labels) -> str:
    if not key:
        return ""
    escaped = ((k, v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")) for k, v in key)
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
