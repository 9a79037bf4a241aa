"""The pieces around the Metrics interface: shard reports counted, health answers, the
HTTP server, the source's lag measured at most once a second, Redis faults counted, the
port setting."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import redis

from channels.base import Delivery
from engine.actions import Action
from engine.errors import ConfigError
from flows.jobs.deliver import _reason
from flows.metrics import install, installed
from flows.metrics.engine import record_reports
from flows.metrics.health import Health
from flows.metrics.http import MetricsPortError, serve
from flows.metrics.kafka import SourceWatch
from flows.metrics.memory import MemoryMetrics
from flows.metrics.names import ACTIONS, ERRORS, EVENTS, LAG, LATENCY, SHARD_COUNTS, bounded
from flows.pipeline.shard import ShardReport
from flows.retry import retrying
from flows.settings import from_env


def action(n: int, status: str = "sent", reason: str | None = None, **extra: int) -> Action:
    return Action(
        action_id=f"a{n}",
        at=1_000,
        user_id=f"u{n}",
        journey="cart",
        step="s1",
        channel="email",
        template=None,
        status=status,  # type: ignore[arg-type]
        rules_version="1",
        reason=reason,
        **extra,  # type: ignore[arg-type]
    )


def test_a_batch_of_reports_counts_outcomes_actions_and_latency() -> None:
    metrics = MemoryMetrics()
    reports = [
        ShardReport(0, [action(1, ingested_at=9_000), action(2)], {"applied": 3, "stale": 1}),
        ShardReport(
            1,
            [action(3, "suppressed", "capped", ingested_at=9_500)],
            {"applied": 2, "identity.linked": 1, "actions.sent": 2, "actions.suppressed": 1},
        ),
    ]
    record_reports(metrics, reports, now_ms=10_000)
    assert metrics.read(EVENTS, outcome="applied") == 5
    assert metrics.read(EVENTS, outcome="stale") == 1
    assert metrics.read(SHARD_COUNTS, counter="identity.linked") == 1
    assert metrics.read(SHARD_COUNTS, counter="actions.sent") == 0  # labelled below instead
    labels = {"journey": "cart", "channel": "email"}
    assert metrics.read(ACTIONS, **labels, status="sent", reason="none") == 2
    assert metrics.read(ACTIONS, **labels, status="suppressed", reason="capped") == 1
    assert metrics.read(LATENCY) == 2  # the timer's action (no ingested_at) is not observed
    body = metrics.exposition()[0].decode()
    assert f"{LATENCY}_sum 1.5" in body  # 1 s + 0.5 s


def test_health_before_start_while_beating_and_when_stuck() -> None:
    now = [100.0]
    failing = {"redis": True}

    def redis_answers() -> None:
        if failing["redis"]:
            raise ConnectionError("refused")

    health = Health({"redis": redis_answers}, stale_s=10, cache_s=0, clock=lambda: now[0])
    assert health.live() == (True, "starting")
    assert health.ready() == (False, "not started yet")
    health.beat()
    assert health.ready() == (False, "redis does not answer (ConnectionError: refused)")
    failing["redis"] = False
    assert health.ready() == (True, "ok")
    now[0] += 11
    assert health.live()[0] is False
    assert "has not turned for 11 s" in health.live()[1]
    assert health.ready()[0] is False


def test_ready_answers_are_kept_for_cache_s() -> None:
    calls = []
    now = [0.0]
    health = Health({"kafka": lambda: calls.append(1)}, cache_s=1.0, clock=lambda: now[0])
    health.beat()
    for _ in range(5):
        assert health.ready() == (True, "ok")
    now[0] += 1.5
    health.beat()
    health.ready()
    assert len(calls) == 2


def fetch(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_the_server_answers_metrics_and_probes_and_refuses_a_taken_port() -> None:
    metrics = MemoryMetrics()
    metrics.count(EVENTS, 2, outcome="applied")
    health = Health()
    server = serve(0, metrics, health, host="127.0.0.1")
    try:
        status, kind, body = fetch(server.port, "/metrics")
        assert (status, kind.split(";")[0]) == (200, "text/plain")
        assert 'tetik_events_total{outcome="applied"} 2.0' in body
        assert fetch(server.port, "/healthz")[::2] == (200, "starting\n")
        assert fetch(server.port, "/readyz")[::2] == (503, "not started yet\n")
        health.beat()
        assert fetch(server.port, "/readyz")[::2] == (200, "ok\n")
        assert fetch(server.port, "/metrics?x=1")[0] == 200
        assert fetch(server.port, "/")[0] == 404
        with pytest.raises(
            MetricsPortError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"
        ):
            serve(server.port, metrics, health, host="127.0.0.1")
    finally:
        server.close()


class FakeConsumer:
    """What SourceWatch asks of a consumer: the marks of its latest fetch."""

    def __init__(self, low: int, high: int) -> None:
        self.marks = (low, high)
        self.asked = 0

    def get_watermark_offsets(self, _tp: object, cached: bool = False) -> tuple[int, int]:
        assert cached  # never a request to the broker
        self.asked += 1
        return self.marks


def test_the_source_sets_lag_at_most_once_a_second_and_beats_every_poll() -> None:
    metrics, now, beats = MemoryMetrics(), [0.0], []
    watch = SourceWatch(metrics, lambda: beats.append(1), clock=lambda: now[0])
    consumer = FakeConsumer(0, 10)
    watch.polled("events", 2, 4, consumer)  # type: ignore[arg-type]
    assert metrics.read(LAG, topic="events", partition="2") == 6
    consumer.marks = (0, 12)
    watch.polled("events", 2, 12, consumer)  # type: ignore[arg-type]
    assert metrics.read(LAG, topic="events", partition="2") == 6  # within the second
    now[0] = 1.0
    watch.polled("events", 2, 12, consumer)  # type: ignore[arg-type]
    assert metrics.read(LAG, topic="events", partition="2") == 0
    assert (len(beats), consumer.asked) == (3, 2)
    consumer.marks = (-1001, -1001)  # no fetch response yet: nothing set
    watch.polled("events", 3, -2, consumer)  # type: ignore[arg-type]
    assert metrics.read(LAG, topic="events", partition="3") == 0
    watch.error(fatal=False)
    watch.error(fatal=True)
    assert metrics.read(ERRORS, system="kafka", kind="consumer") == 1
    assert metrics.read(ERRORS, system="kafka", kind="fatal") == 1


def test_labels_from_outside_stay_bounded() -> None:
    assert bounded("email", ("email", "sms")) == "email"
    assert bounded("u12345", ("email", "sms")) == "other"


def test_the_port_setting() -> None:
    assert from_env({}).metrics_port == 0
    assert from_env({"TETIK_METRICS_PORT": "9464"}).metrics_port == 9464
    for bad in ("0", "70000", "http"):
        with pytest.raises(ConfigError, match="TETIK_METRICS_PORT must be a TCP port"):
            from_env({"TETIK_METRICS_PORT": bad})


def test_each_retried_redis_fault_counts_in_the_installed_metrics() -> None:
    metrics, before = MemoryMetrics(), installed()
    failures = [redis.ConnectionError("refused"), redis.TimeoutError("frozen")]

    def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    install(metrics)
    try:
        assert retrying("testing", flaky, report=lambda _line: None) == "done"
    finally:
        install(before)
    assert metrics.read(ERRORS, system="redis", kind="ConnectionError") == 1
    assert metrics.read(ERRORS, system="redis", kind="TimeoutError") == 1


def test_a_failed_delivery_has_a_bounded_reason_not_its_detail() -> None:
    def result(outcome: str, adapter: str = "webhook", detail: str = "") -> Delivery:
        return Delivery(
            action_id="a1",
            channel="sms",
            adapter=adapter,
            outcome=outcome,
            detail=detail,  # type: ignore[arg-type]
        )

    assert _reason(result("delivered")) == "none"
    assert (
        _reason(result("failed", adapter="-", detail="no adapter for channel 'x'")) == "no_adapter"
    )
    assert _reason(result("failed", detail="adapter error: KeyError: 'u1'")) == "adapter_error"
    assert _reason(result("failed", detail="HTTP 503 after 2 attempts")) == "send_failed"
