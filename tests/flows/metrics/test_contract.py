"""The contract every :class:`flows.metrics.Metrics` keeps, run against each implementation.

Like tests/channels/test_contract.py: one suite, a factory per
implementation. The text each renders is read back with prometheus_client's
own parser, so the in-memory one is held to the real format.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.metrics import Metrics
from flows.metrics.memory import MemoryMetrics
from flows.metrics.names import ACTIONS, EVENTS, LAG, LATENCY, SPECS, TIMERS, MetricError
from flows.metrics.prometheus import PrometheusMetrics

IMPLEMENTATIONS: dict[str, Callable[[], Metrics]] = {
    "memory": MemoryMetrics,
    "prometheus": PrometheusMetrics,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def metrics(request: pytest.FixtureRequest) -> Metrics:
    return IMPLEMENTATIONS[request.param]()


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed by prometheus_client (``_created`` left out)."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_counters_add_up_per_label_set(metrics: Metrics) -> None:
    metrics.count(EVENTS, 3, outcome="applied")
    metrics.count(EVENTS, outcome="applied")
    metrics.count(EVENTS, 2, outcome="duplicate")
    assert metrics.read(EVENTS, outcome="applied") == 4
    assert metrics.read(EVENTS, outcome="duplicate") == 2
    assert metrics.read(EVENTS, outcome="stale") == 0  # never touched


def test_a_gauge_holds_the_last_value_set(metrics: Metrics) -> None:
    metrics.set(LAG, 12, topic="events", partition="0")
    metrics.set(LAG, 3, topic="events", partition="0")
    metrics.set(LAG, 7, topic="events", partition="1")
    assert metrics.read(LAG, topic="events", partition="0") == 3
    assert metrics.read(LAG, topic="events", partition="1") == 7


def test_a_histogram_reads_as_its_number_of_observations(metrics: Metrics) -> None:
    for seconds in (0.004, 0.2, 0.2, 50.0, 500.0):
        metrics.observe(LATENCY, seconds)
    assert metrics.read(LATENCY) == 5
    found = samples(metrics)
    assert found[(f"{LATENCY}_count", ())] == 5
    assert found[(f"{LATENCY}_sum", ())] == pytest.approx(550.404)
    assert found[(f"{LATENCY}_bucket", (("le", "0.005"),))] == 1
    assert found[(f"{LATENCY}_bucket", (("le", "0.25"),))] == 3
    assert found[(f"{LATENCY}_bucket", (("le", "120.0"),))] == 4
    assert found[(f"{LATENCY}_bucket", (("le", "+Inf"),))] == 5


def test_the_exposition_carries_every_sample_with_its_labels(metrics: Metrics) -> None:
    labels = {"journey": "cart", "channel": "email", "status": "sent", "reason": "none"}
    metrics.count(ACTIONS, 2, **labels)
    metrics.set(TIMERS, 41, shard="3")
    metrics.count(EVENTS, 1, outcome='odd "quoted"\nvalue')  # escaped, not broken
    found = samples(metrics)
    assert found[(ACTIONS, tuple(sorted(labels.items())))] == 2
    assert found[(TIMERS, (("shard", "3"),))] == 41
    assert found[(EVENTS, (("outcome", 'odd "quoted"\nvalue'),))] == 1


def test_every_declared_metric_is_in_the_exposition_with_its_help(metrics: Metrics) -> None:
    body, _ = metrics.exposition()
    for spec in SPECS.values():
        assert f"# TYPE {spec.name} {spec.kind}" in body.decode()
        assert f"# HELP {spec.name} {spec.help}" in body.decode()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.count("tetik_no_such_total"), "unknown metric"),
        (lambda m: m.count(EVENTS, 1), "takes labels (outcome), got (none)"),
        (lambda m: m.count(EVENTS, 1, outcome="x", user="u1"), "takes labels"),
        (lambda m: m.set(EVENTS, 1, outcome="x"), "is a counter, not a gauge"),
        (lambda m: m.observe(LAG, 1, topic="t", partition="0"), "is a gauge, not a histogram"),
        (lambda m: m.count(EVENTS, -1, outcome="x"), "cannot go down"),
        (lambda m: m.read(LAG, topic="t"), "takes labels"),
    ],
)
def test_an_undeclared_use_fails_with_one_line(
    metrics: Metrics, call: Callable[[Metrics], object], message: str
) -> None:
    with pytest.raises(MetricError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(metrics)


def test_counts_from_many_threads_are_not_lost(metrics: Metrics) -> None:
    def work() -> None:
        for _ in range(2_000):
            metrics.count(EVENTS, outcome="applied")
            metrics.observe(LATENCY, 0.1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.read(EVENTS, outcome="applied") == 8_000
    assert metrics.read(LATENCY) == 8_000


def test_two_instances_share_nothing() -> None:
    for make in IMPLEMENTATIONS.values():
        first, second = make(), make()
        first.count(EVENTS, outcome="applied")
        assert second.read(EVENTS, outcome="applied") == 0
