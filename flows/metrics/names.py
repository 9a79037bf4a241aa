"""Every metric tetik exports, declared once: its kind, name, help and label names.

Rules of this module:

* A metric is used by its name (the constants below) with exactly the labels
  its :class:`Spec` lists; :func:`check` refuses anything else, so both
  implementations of :class:`flows.metrics.Metrics` fail the same way on a typo.
* Label values stay bounded: journeys, channels, shards, partitions, outcomes
  and reasons come from the rules or the code, never from a shopper (no user
  ids, no free text); :func:`bounded` folds a value outside a known set into
  ``other`` where the input is not trusted (a consumed record's channel).
* Counters end in ``_total``; the histogram's buckets are in seconds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

# Event-to-action latency buckets, seconds: 5 ms to 2 min.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
NONE = "none"  # the label value of a reason that is not there (a sent action)
OTHER = "other"  # the label value of anything outside a bounded set


class MetricError(ValueError):
    """A metric used with a name or labels this module does not declare."""


@dataclass(frozen=True)
class Spec:
    """One metric: what it is and the labels every sample of it carries."""

    kind: Kind
    name: str
    help: str
    labels: tuple[str, ...] = ()


EVENTS = "tetik_events_total"
ACTIONS = "tetik_actions_total"
SHARD_COUNTS = "tetik_shard_counts_total"
LATENCY = "tetik_event_to_action_seconds"
LAG = "tetik_consumer_lag"
TIMERS = "tetik_timers_pending"
ERRORS = "tetik_errors_total"
DELIVERIES = "tetik_deliveries_total"
COLLECT_REQUESTS = "tetik_collect_requests_total"

SPECS: Mapping[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "counter",
            EVENTS,
            "Events the engine finished with, by outcome "
            "(applied, duplicate, stale, skipped, invalid, failed)",
            ("outcome",),
        ),
        Spec(
            "counter",
            ACTIONS,
            "Actions the engine emitted, by journey, channel, status and reason",
            ("journey", "channel", "status", "reason"),
        ),
        Spec(
            "counter",
            SHARD_COUNTS,
            "The shards' other counters (identity.*, catalog.*, sweep.*, errors.timer, ...), "
            "as in the Redis stats hash",
            ("counter",),
        ),
        Spec(
            "histogram",
            LATENCY,
            "Seconds from an event reaching Kafka to the action it caused being emitted",
        ),
        Spec(
            "gauge",
            LAG,
            "Records of a partition not read yet (high watermark minus position)",
            ("topic", "partition"),
        ),
        Spec("gauge", TIMERS, "Shoppers with a pending timer, per shard", ("shard",)),
        Spec(
            "counter",
            ERRORS,
            "Faults met talking to Redis or Kafka (each retried Redis call, each client error)",
            ("system", "kind"),
        ),
        Spec(
            "counter",
            DELIVERIES,
            "Actions tetik deliver handled, by channel, outcome and reason",
            ("channel", "outcome", "reason"),
        ),
        Spec(
            "counter",
            COLLECT_REQUESTS,
            "HTTP calls tetik collect answered, by endpoint and status code",
            ("endpoint", "status"),
        ),
    )
}


def check(name: str, kind: Kind, labels: Mapping[str, str]) -> Spec:
    """The spec of ``name``; MetricError (one line) unless it is a ``kind`` with exactly
    these label names."""
    spec = SPECS.get(name)
    if spec is None:
        raise MetricError(f"unknown metric {name!r}: declare it in flows/metrics/names.py")
    if spec.kind != kind:
        raise MetricError(f"{name} is a {spec.kind}, not a {kind}")
    if len(labels) != len(spec.labels) or any(label not in labels for label in spec.labels):
        given = ", ".join(sorted(labels)) or "none"
        raise MetricError(f"{name} takes labels ({', '.join(spec.labels)}), got ({given})")
    return spec


def bounded(value: str, known: Collection[str]) -> str:
    """``value`` when it is one of ``known``, else ``other`` (see the module rules)."""
    return value if value in known else OTHER
