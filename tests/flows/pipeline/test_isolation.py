"""Per-record isolation in the live pipeline, in process (Bytewax's testing source and sinks).

A poison event goes to the dead-letter topic with its reason, exception class
and source; its shopper's other events and everyone else's go on. The engine
is the real one; ``tests.engine.faulty.FaultyEngine`` injects the faults a bug would cause
(an exception in processing, a state that no longer serialises) for events
whose id starts with ``poison``.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from engine.events import MAX_FUTURE_MS
from engine.rules.loader import load_rules
from flows.pipeline.breaker import Breaker, BreakerConfig, Halt
from flows.pipeline.dataflow import build_flow
from flows.retry import RedisClient
from flows.stores.states import Shoppers
from tests.engine.faulty import FaultyEngine
from tests.flows.pipeline.support import NOW, Pipeline, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {push: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: push
"""


def signup(n: int, user: str) -> dict[str, Any]:
    return {"event_id": f"e{n}", "type": "signup", "ts": NOW - 1000 + n, "user_id": user}


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES)


def run(pipeline: Pipeline, messages: list[Any], breaker: Breaker | None = None) -> None:
    from bytewax.testing import TestingSink, TestingSource, run_main

    engine = FaultyEngine(load_rules(RULES, "rules.yaml"))
    flow = build_flow(
        TestingSource(messages),
        TestingSink(pipeline.dead),
        TestingSink(pipeline.reports),
        pipeline.config(engine=engine),
        breaker=breaker,
    )
    run_main(flow)


def dead_letters(pipeline: Pipeline, expect: int) -> list[Any]:
    """The processing failures, from the dead-letter topic (they go out with the outbox)."""
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": "t"})
    consumer.assign([TopicPartition(pipeline.dlq_topic, 0, 0)])
    found: list[Any] = []
    for _ in range(100):
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            found.append(message)
        if len(found) >= expect:
            break
    consumer.close()
    return found


@pytest.mark.parametrize("poison", ["poison-raise", "poison-state"])
def test_a_poison_event_is_dead_lettered_and_everyone_else_goes_on(
    pipeline: Pipeline, poison: str
) -> None:
    docs = [
        signup(1, "u1"),
        {**signup(2, "u1"), "event_id": poison, "type": "login"},
        {**signup(3, "u1"), "type": "login"},
        signup(4, "u2"),
    ]
    run(pipeline, [message(i, d) for i, d in enumerate(docs)])
    (letter,) = dead_letters(pipeline, 1)
    found = {k: v.decode() for k, v in letter.headers()}
    assert found["tetik.error.class"] in {"OverflowError", "TypeError", "ValueError"}
    assert found["tetik.error.reason"].startswith("processing failed: ")
    assert (found["tetik.source.partition"], found["tetik.source.offset"]) == ("0", "1")
    assert letter.value() == orjson.dumps(docs[1])  # the original bytes, to re-drive
    sent = sorted(a.user_id for a in pipeline.actions() if a.status == "sent")
    assert sent == ["u1", "u2"]
    stats = Shoppers(pipeline.client, pipeline.keys).stats()
    assert stats["failed"] == 1
    assert stats["applied"] == 3
    # u1's state holds the events before and after the poison, not the poison.
    state = Shoppers(pipeline.client, pipeline.keys).load("u1")
    assert state is not None
    assert [r.ts for r in state.windows["login"]] == [docs[2]["ts"]]
    assert "points" not in state.profile


def test_an_event_dated_past_the_future_bound_is_dead_lettered(pipeline: Pipeline) -> None:
    late = {**signup(1, "u1"), "ts": NOW + MAX_FUTURE_MS + 60_000}
    run(pipeline, [message(0, late), message(1, signup(2, "u2"))])
    assert len(pipeline.dead) == 1
    reason = dict(pipeline.dead[0].headers)["tetik.error.reason"]
    assert b"in the future are refused" in reason
    assert [a.user_id for a in pipeline.actions()] == ["u2"]


def test_the_breaker_stops_the_sources_when_most_records_fail(pipeline: Pipeline) -> None:
    stop = threading.Event()
    halt = Halt(stop)
    breaker = Breaker(halt, BreakerConfig(max_share=0.5, window_s=60, min_records=20))
    bad = [message(i, {"event_id": f"x{i}", "type": "signup"}) for i in range(30)]
    run(pipeline, bad, breaker)
    assert len(pipeline.dead) == 30  # nothing is lost: every bad record is dead-lettered
    assert stop.is_set()
    assert halt.reason is not None
    assert "failed" in halt.reason
    assert "TETIK_DLQ_MAX_SHARE" in halt.reason


def test_the_breaker_holds_below_its_share(pipeline: Pipeline) -> None:
    halt = Halt()
    breaker = Breaker(halt, BreakerConfig(max_share=0.5, window_s=60, min_records=20))
    docs = [signup(i, f"u{i}") for i in range(40)]
    messages = [message(i, d) for i, d in enumerate(docs)]
    messages += [message(40 + i, {"event_id": "bad"}) for i in range(5)]
    run(pipeline, messages, breaker)
    assert len(pipeline.dead) == 5
    assert halt.reason is None
    assert len(pipeline.actions()) == 40
