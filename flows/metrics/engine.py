"""The live engine's metrics: its shards' reports, its timers, its producer's faults.

Rules of this module:

* :class:`ReportsSink` is the live dataflow's ``reports`` output (where it
  dropped them before): each batch of :class:`~flows.pipeline.shard.ShardReport`
  is summed in memory first, then counted with one call per distinct label
  set, so the per-event cost is a dict update. Events by outcome
  (``applied``, ``duplicate``, ``stale``, ``skipped``, ``failed``; ``invalid``
  is counted by the dead-letter sink), actions by journey, channel, status
  and reason, and every other counter of the Redis stats hash under its own
  name: the same counts the shards add to ``{prefix}:{s}:stats``, which keeps
  feeding the progress line and the demo.
* Latency is the wall clock when the report reaches the sink (the shard has
  just handed its commit and records to the committer) minus the action's
  ``ingested_at`` (when its event reached Kafka). Actions a timer fired carry
  no ``ingested_at`` and are not observed.
* :class:`TimersPending` sets the timers gauge per shard from one pipelined
  ``ZCARD`` per shard every ``interval`` seconds, on a thread of its own; one
  process of a deployment runs it (process 0), so a sum over processes does
  not count a shard twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.clock import wall_ms
from flows.metrics import Metrics
from flows.metrics.names import ACTIONS, ERRORS, EVENTS, LATENCY, NONE, SHARD_COUNTS, TIMERS
from flows.pipeline.shard import ShardReport
from flows.stores.keys import Keys
from flows.stores.states import timers_pending

OUTCOMES = frozenset({"applied", "duplicate", "stale", "skipped", "failed"})
TIMERS_EVERY_S = 5.0


def record_reports(metrics: Metrics, reports: Iterable[ShardReport], now_ms: int) -> None:
    """Count a batch of shard reports (see the module rules)."""
    counts: Counter[str] = Counter()
    actions: Counter[tuple[str, str, str, str]] = Counter()
    latencies: list[float] = []
    for report in reports:
        counts.update(report.counts)
        for action in report.actions:
            actions[(action.journey, action.channel, action.status, action.reason or NONE)] += 1
            if action.ingested_at is not None:
                latencies.append(max(now_ms - action.ingested_at, 0) / 1000)
    for name, value in counts.items():
        if name in OUTCOMES:
            metrics.count(EVENTS, value, outcome=name)
        elif not name.startswith("actions."):  # the actions come with their labels below
            metrics.count(SHARD_COUNTS, value, counter=name)
    for (journey, channel, status, reason), value in actions.items():
        metrics.count(
            ACTIONS, value, journey=journey, channel=channel, status=status, reason=reason
        )
    for seconds in latencies:
        metrics.observe(LATENCY, seconds)


class _Counting(StatelessSinkPartition[ShardReport]):
    def __init__(self, metrics: Metrics, clock: Callable[[], int]) -> None:
        self._metrics = metrics
        self._clock = clock

    def write_batch(self, items: list[ShardReport]) -> None:
        record_reports(self._metrics, items, self._clock())


class ReportsSink(DynamicSink[ShardReport]):
    """The live engine's ``reports`` output: counted, then dropped (module rules)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], int] = wall_ms) -> None:
        self._metrics = metrics
        self._clock = clock

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Counting:
        return _Counting(self._metrics, self._clock)


class TimersPending(threading.Thread):
    """Sets the timers gauge of every shard every ``interval`` s until stopped."""

    def __init__(
        self, client: Any, keys: Keys, metrics: Metrics, interval: float = TIMERS_EVERY_S
    ) -> None:
        super().__init__(daemon=True, name="tetik-timers-gauge")
        self._client = client
        self._keys = keys
        self._metrics = metrics
        self._interval = interval
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.measure()
            if self._done.wait(self._interval):
                return

    def measure(self) -> None:
        """One reading (a Redis fault counts as an error and leaves the gauges as they were)."""
        try:
            sizes = timers_pending(self._client, self._keys)
        except redis.RedisError as exc:
            self._metrics.count(ERRORS, system="redis", kind=type(exc).__name__)
            return
        for index, size in enumerate(sizes):
            self._metrics.set(TIMERS, float(size), shard=str(index))

    def stop(self) -> None:
        self._done.set()
