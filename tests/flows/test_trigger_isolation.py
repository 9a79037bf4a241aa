"""Per-record isolation in the live flow, in process (Bytewax's testing source and sinks).

A poison event goes to the dead-letter queue with its reason, exception class
and source; its user's other events and everyone else's go on. The engine is
the real one; ``FaultyEngine`` injects the faults a bug would cause (an
exception in processing, a state that no longer serialises) for events whose
id starts with ``poison``.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
import redis
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.testing import TestingSink, TestingSource, run_main

from engine.actions import Action
from engine.events import MAX_FUTURE_MS, Event
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.state import UserState
from flows.breaker import Breaker, BreakerConfig, Halt
from flows.ingest import to_dlq
from flows.runtime import RulesRuntime
from flows.store import BatchLoader, StateStore
from flows.trigger import Outcome, build_trigger_flow
from flows.watermark import Watermark, wall_ms

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
NOW = wall_ms()


class FaultyEngine(Engine):
    """The real engine, plus the faults of a bug for events named ``poison*``."""

    def handle(
        self, state: UserState, event: Event, now: int
    ) -> tuple[str, list[Action], list[Action]]:
        result = super().handle(state, event, now)
        if event.event_id.startswith("poison-raise"):
            raise OverflowError("injected: processing failed half-way")
        if event.event_id.startswith("poison-state"):
            state.profile["points"] = 2**70  # msgpack cannot hold it: dumps raises
        return result


def message(
    offset: int, doc: dict[str, Any], ts: int | None = None
) -> KafkaSourceMessage[Any, Any]:
    stamp = (1, NOW if ts is None else ts)
    return KafkaSourceMessage(
        key=b"k", value=orjson.dumps(doc), topic="events", partition=0, offset=offset,
        timestamp=stamp,
    )  # fmt: skip


def signup(n: int, user: str, prefix: str = "e") -> dict[str, Any]:
    return {"event_id": f"{prefix}{n}", "type": "signup", "ts": NOW - 1000 + n, "user_id": user}


def run(
    store: StateStore, messages: list[KafkaSourceMessage[Any, Any]], breaker: Breaker | None = None
) -> tuple[list[KafkaSinkMessage[Any, Any]], list[Outcome]]:
    out: list[Outcome] = []
    runtime = RulesRuntime(FaultyEngine(load_rules(RULES, "rules.yaml")))
    flow = build_trigger_flow(
        TestingSource(messages),
        TestingSink(out),
        BatchLoader(store),
        runtime,
        Watermark(["0-events"]),
        breaker=breaker,
    )
    run_main(flow)
    return [to_dlq(d) for o in out for d in o.dead], out


@pytest.fixture
def store(redis_client: redis.Redis, unique: str) -> StateStore:
    return StateStore(redis_client, prefix=unique, ttl_ms=3_600_000)


def headers(record: KafkaSinkMessage[Any, Any]) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


@pytest.mark.parametrize("poison", ["poison-raise", "poison-state"])
def test_a_poison_event_is_dead_lettered_and_everyone_else_goes_on(
    store: StateStore, poison: str
) -> None:
    docs = [
        signup(1, "u1"),
        {**signup(2, "u1"), "event_id": poison, "type": "login"},
        {**signup(3, "u1"), "type": "login"},
        signup(4, "u2"),
    ]
    dlq, out = run(store, [message(i, d) for i, d in enumerate(docs)])
    assert len(dlq) == 1
    found = headers(dlq[0])
    assert found["tetik.error.class"] in {"OverflowError", "TypeError", "ValueError"}
    assert found["tetik.error.reason"].startswith("processing failed: ")
    assert (found["tetik.source.partition"], found["tetik.source.offset"]) == ("0", "1")
    assert dlq[0].value == orjson.dumps(docs[1])  # the original bytes, to re-drive
    sent = sorted(a.user_id for o in out for a in o.actions if a.status == "sent")
    assert sent == ["u1", "u2"]
    counts = [o.counts for o in out]
    assert sum(c.get("failed", 0) for c in counts) == 1
    assert sum(c.get("applied", 0) for c in counts) == 3
    # u1's state holds the events before and after the poison, not the poison.
    data = [o.data for o in out if o.identity == "u1" and o.data is not None][-1]
    from engine.state import loads

    state = loads(data)
    assert len(state.windows["login"]) == 1
    assert state.windows["login"][0].ts == docs[2]["ts"]
    assert "points" not in state.profile


def test_an_event_dated_past_the_future_bound_is_dead_lettered(store: StateStore) -> None:
    late = {**signup(1, "u1"), "ts": NOW + MAX_FUTURE_MS + 60_000}
    dlq, out = run(store, [message(0, late), message(1, signup(2, "u2"))])
    assert len(dlq) == 1
    assert "in the future are refused" in headers(dlq[0])["tetik.error.reason"]
    assert [a.user_id for o in out for a in o.actions] == ["u2"]


def test_the_breaker_stops_the_sources_when_most_records_fail(store: StateStore) -> None:
    stop = threading.Event()
    halt = Halt(stop)
    breaker = Breaker(halt, BreakerConfig(max_share=0.5, window_s=60, min_records=20))
    bad = [message(i, {"event_id": f"x{i}", "type": "signup"}) for i in range(30)]
    dlq, _ = run(store, bad, breaker)
    assert len(dlq) == 30  # nothing is lost: every bad record is dead-lettered
    assert stop.is_set()
    assert halt.reason is not None
    assert "failed" in halt.reason
    assert "TETIK_DLQ_MAX_SHARE" in halt.reason


def test_the_breaker_holds_below_its_share(store: StateStore) -> None:
    halt = Halt()
    breaker = Breaker(halt, BreakerConfig(max_share=0.5, window_s=60, min_records=20))
    docs = [signup(i, f"u{i}") for i in range(40)]
    messages = [message(i, d) for i, d in enumerate(docs)]
    messages += [message(40 + i, {"event_id": "bad"}) for i in range(5)]
    dlq, out = run(store, messages, breaker)
    assert len(dlq) == 5
    assert halt.reason is None
    assert len([a for o in out for a in o.actions]) == 40
