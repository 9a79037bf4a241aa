"""Derived events and sweeps: fanned out through the shards, paced, never twice.

In process (Bytewax's testing source and sink) against the real Redis and Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from bytewax.testing import TestingSink, run_main

from engine.events import Event
from flows.pipeline.dataflow import build_flow
from flows.pipeline.decode import Fanout
from flows.pipeline.derive import derived_id
from flows.pipeline.sweep import Every
from flows.retry import RedisClient
from flows.stores.states import read_stats
from tests.flows.live import read_topic
from tests.flows.pipeline.support import NOW, HoldingSource, Pipeline, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out}
journeys:
  - id: announced
    trigger: announced
    steps:
      - send: push
  - id: welcome
    trigger: signup
    steps:
      - send: email
  - id: recheck
    trigger: recheck
    steps:
      - send: email
"""


class Announce:
    """A test fan-out: an ``announce`` event reaches every identity listed in its props."""

    name = "announce"

    def wants(self, event: Event) -> bool:
        return event.type == "announce"

    def take(self, events: Sequence[Event]) -> list[bytes | None]:
        return [b"" for _ in events]

    def page(
        self, event: Event, data: bytes, cursor: str, limit: int
    ) -> tuple[list[Event | Fanout], str | None]:
        targets: list[str] = (event.props or {})["to"]
        start = int(cursor or 0)
        chunk = targets[start : start + limit]
        derived = [
            Event(
                event_id=derived_id(event.event_id, who), type="announced", ts=event.ts, user_id=who
            )
            for who in chunk
        ]
        end = start + len(chunk)
        return derived, (str(end) if end < len(targets) else None)


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, partitions=2)


def announce(n: int, targets: list[str]) -> dict[str, Any]:
    return event(n, "store", "announce", NOW - 5000, props={"to": targets})


def run_with_derivers(
    pipeline: Pipeline, messages: list[Any], page: int, actions: int = 0, **overrides: Any
) -> None:
    """Run until ``actions`` actions were emitted (at most 20 s; 0: for half a second)."""
    config = pipeline.config(**overrides)
    from flows.pipeline import derive

    def emitted() -> bool:
        found = read_stats(pipeline.client, pipeline.keys).get("actions.emitted", 0)
        return actions > 0 and found >= actions

    old, derive.PAGE = derive.PAGE, page
    try:
        flow = build_flow(
            HoldingSource(messages, emitted, lambda: None, limit_s=20 if actions else 0.5),
            TestingSink(pipeline.dead),
            TestingSink(pipeline.reports),
            config,
            derivers=[Announce()],
        )
        run_main(flow)
    finally:
        derive.PAGE = old


def test_an_input_fans_out_to_each_shopper_once_through_the_shards(pipeline: Pipeline) -> None:
    targets = [f"s{i}" for i in range(30)]
    run_with_derivers(pipeline, [message(0, announce(0, targets))], page=7, actions=30)
    pushes = list(read_topic(pipeline.bootstrap, pipeline.actions_topic))
    assert sorted(a["user_id"] for a in pushes) == sorted(targets)
    assert {a["channel"] for a in pushes} == {"push"}
    stored = pipeline.client.get(pipeline.keys.state("s3"))
    assert stored is not None  # the derived event is the shopper's, in its shard


def test_an_input_processed_again_fans_out_nothing_twice(pipeline: Pipeline) -> None:
    targets = [f"s{i}" for i in range(12)]
    messages = [message(0, announce(0, targets))]
    run_with_derivers(pipeline, messages, page=5, actions=12)
    run_with_derivers(pipeline, messages, page=5)  # as after a crash before the snapshot
    pushes = [a["action_id"] for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)]
    assert len(pushes) == len(set(pushes)) == 12
    assert read_stats(pipeline.client, pipeline.keys)["duplicate"] == 12


def test_a_large_fanout_is_paced_and_other_shoppers_go_on_meanwhile(pipeline: Pipeline) -> None:
    targets = [f"s{i:05}" for i in range(3000)]
    later = [message(i + 1, event(i + 1, f"u{i}", "signup", NOW - 4000 + i)) for i in range(5)]
    run_with_derivers(pipeline, [message(0, announce(0, targets)), *later], page=100,
                      actions=3005)  # fmt: skip
    order = [a.channel for r in pipeline.reports for a in r.actions]
    assert order.count("push") == 3000
    assert order.count("email") == 5
    last_push = max(i for i, c in enumerate(order) if c == "push")
    assert order.index("email") < last_push  # the signups did not wait for the fan-out


def known_shoppers(pipeline: Pipeline, count: int) -> None:
    docs = [event(i, f"k{i:02}", "login", NOW - 60_000 + i) for i in range(count)]
    pipeline.run(message(i, d) for i, d in enumerate(docs))


def sweep_run(pipeline: Pipeline, sweep: Every, until_count: int, page: int) -> None:
    def swept() -> bool:
        return read_stats(pipeline.client, pipeline.keys).get("sweep.recheck", 0) >= until_count

    config = pipeline.config(sweeps=[sweep], sweep_page=page)
    watermark = config.watermark
    flow = build_flow(
        HoldingSource([], swept, lambda: watermark.polled("0-events", 0, True), limit_s=15),
        TestingSink(pipeline.dead),
        TestingSink(pipeline.reports),
        config,
    )
    run_main(flow)


def test_a_sweep_visits_every_known_shopper_once_per_run(pipeline: Pipeline) -> None:
    known_shoppers(pipeline, 25)
    sweep = Every("recheck", every_ms=86_400_000, event_type="recheck", first_run=NOW - 1000)
    sweep_run(pipeline, sweep, until_count=25, page=4)
    emails = [
        a
        for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)
        if a["journey"] == "recheck"
    ]
    assert sorted(a["user_id"] for a in emails) == [f"k{i:02}" for i in range(25)]


class Crash(Exception):
    """Stands for the process dying in the middle of a sweep's page."""


class CrashingEvery(Every):
    """``Every``, except that the engine dies at the ``crash_at``-th shopper."""

    def __init__(self, crash_at: int) -> None:
        super().__init__("recheck", 86_400_000, "recheck", first_run=NOW - 1000)
        self.calls = 0
        self.crash_at = crash_at

    def event(self, identity: str, run: int, now: int) -> Event | None:
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"died at {identity}")
        return super().event(identity, run, now)


def test_a_sweep_that_died_half_way_goes_on_where_it_stopped(pipeline: Pipeline) -> None:
    known_shoppers(pipeline, 25)
    with pytest.raises(Exception, match="on_notify"):
        sweep_run(pipeline, CrashingEvery(crash_at=11), until_count=25, page=4)
    first = read_stats(pipeline.client, pipeline.keys).get("sweep.recheck", 0)
    assert 0 < first < 25  # some pages were written before the crash, not all
    sweep = Every("recheck", every_ms=86_400_000, event_type="recheck", first_run=NOW - 1000)
    sweep_run(pipeline, sweep, until_count=25, page=4)  # a new start: marks come from Redis
    emails = [
        a
        for a in read_topic(pipeline.bootstrap, pipeline.actions_topic)
        if a["journey"] == "recheck"
    ]
    assert sorted(a["user_id"] for a in emails) == [f"k{i:02}" for i in range(25)]
    assert read_stats(pipeline.client, pipeline.keys)["sweep.recheck"] == 25


def test_the_credit_says_whether_a_fan_out_is_under_way() -> None:
    """The shards space their timer passes while the fan-out stage has inputs to page
    through (flows.pipeline.shard): the stage says so in the credit, and stops saying
    so once its last page is out."""
    from flows.pipeline.decode import Stamped
    from flows.pipeline.derive import Credit, FanoutConfig, FanoutLogic
    from flows.pipeline.watermark import Watermark

    credit = Credit()
    watermark = Watermark(clock=lambda: NOW)  # no partitions: it stands at NOW - lateness
    fanout = FanoutLogic(FanoutConfig([Announce()], watermark, lambda: NOW, 2, credit), None)
    targets = {"to": ["a", "b", "c", "d", "e"]}
    update = Event(event_id="a0", type="announce", ts=NOW - 60_000, user_id="store", props=targets)
    pages = [list(fanout.on_batch([Stamped(update, NOW - 60_000)])[0])]
    assert credit.fanning_out
    while credit.fanning_out:
        credit.add(len(pages[-1]))  # the shards applied the last page
        pages.append(list(fanout.on_notify()[0]))
        assert len(pages) < 10, "the fan-out never ended"
    assert [len(p) for p in pages] == [2, 2, 1]
    assert fanout.notify_at() is None
