"""The chaos suite's judgement, on hand-made logs: tally, recovery, dead letters, verdicts."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from chaos.compare import Emitted, Poison, dead_letters, recovery, tally
from chaos.report import table
from chaos.run import expected_actions
from chaos.scenarios import Result, segment_actions, sizes, verdict
from chaos.workload import POISON_KINDS, SEGMENT_JOURNEYS, poison_value, stream
from engine.errors import InvalidEvent
from engine.events import decode_event

pytestmark = pytest.mark.chaos

T0 = 1_700_000_000_000


def log() -> list[bytes]:
    """Two carts (one bought before its reminder), a signup and a purchase."""
    docs: list[dict[str, Any]] = [
        {"event_id": "e1", "type": "add_to_cart", "ts": T0, "user_id": "u1",
         "product_id": "p1", "price": 30.0},
        {"event_id": "e2", "type": "add_to_cart", "ts": T0 + 100, "user_id": "u2",
         "product_id": "p2", "price": 50.0},
        {"event_id": "e3", "type": "purchase", "ts": T0 + 1_000, "user_id": "u2",
         "order_id": "o1"},
        {"event_id": "e4", "type": "signup", "ts": T0 + 1_500, "user_id": "u3"},
    ]  # fmt: skip
    return [orjson.dumps(d) for d in docs]


@pytest.fixture
def expected() -> list[dict[str, Any]]:
    actions = expected_actions(log())
    # u1: onsite, email, push; u2: onsite then bought (no reminders), 2 thanks; u3: welcome
    assert [(a["user_id"], a["journey"]) for a in actions].count(("u1", "cart")) == 3
    assert not [a for a in actions if a["user_id"] == "u2" and a["journey"] == "cart"][1:]
    return actions


def test_the_rules_start_a_journey_on_entering_and_on_leaving_a_segment() -> None:
    """Two carts put u1 in ``cart_keeper`` (onsite, a push 1 s later); the purchase
    takes it out (an email); one cart (u2) is not enough."""
    docs: list[dict[str, Any]] = [
        {"event_id": "k1", "type": "add_to_cart", "ts": T0, "user_id": "u1",
         "product_id": "p1", "price": 5.0},
        {"event_id": "k2", "type": "add_to_cart", "ts": T0 + 100, "user_id": "u1",
         "product_id": "p2", "price": 5.0},
        {"event_id": "k3", "type": "add_to_cart", "ts": T0 + 100, "user_id": "u2",
         "product_id": "p2", "price": 5.0},
        {"event_id": "k4", "type": "purchase", "ts": T0 + 5_000, "user_id": "u1",
         "order_id": "o1"},
    ]  # fmt: skip
    actions = expected_actions([orjson.dumps(d) for d in docs])
    found = [(a["user_id"], a["journey"], a["channel"], a["at"]) for a in actions
             if a["journey"] in SEGMENT_JOURNEYS]  # fmt: skip
    assert found == [
        ("u1", "keeper_in", "onsite", T0 + 100),
        ("u1", "keeper_in", "push", T0 + 1_100),
        ("u1", "keeper_out", "email", T0 + 5_000),
    ]
    assert segment_actions(actions) == 3


def test_the_same_actions_in_another_order_are_clean(expected: list[dict[str, Any]]) -> None:
    live = [{**a, "ingested_at": T0} for a in reversed(expected)]
    counts = tally(expected, live)
    assert counts.clean
    assert (counts.expected, counts.emitted) == (len(expected), len(expected))


def test_each_kind_of_wrong_output_is_counted(expected: list[dict[str, Any]]) -> None:
    dropped, doubled, changed = expected[0], expected[1], expected[2]
    stray = {**expected[3], "action_id": "f" * 32}
    live = [*expected[1:], doubled, stray]
    live[1] = {**changed, "at": changed["at"] + 1}  # right id, wrong moment
    counts = tally(expected, live)
    assert (counts.duplicate, counts.missing, counts.unexpected, counts.different) == (1, 1, 1, 1)
    assert counts.examples == {
        "duplicate": [doubled["action_id"]],
        "missing": [dropped["action_id"]],
        "unexpected": ["f" * 32],
        "different": [changed["action_id"]],
    }
    assert not counts.clean


def test_a_discrepancy_that_began_while_an_event_was_in_transit_is_excused(
    expected: list[dict[str, Any]],
) -> None:
    u2 = next(a for a in expected if a["user_id"] == "u2")
    reminder = {**u2, "action_id": "e" * 32, "at": T0 + 1_100}  # fired ahead of the purchase
    knock_on = {**u2, "action_id": "d" * 32, "at": T0 + 5_000}  # what followed for u2
    u1_stray = {**expected[0], "action_id": "c" * 32, "at": T0 + 1_100}
    live = [*expected, reminder, knock_on, u1_stray, expected[0]]  # and one duplicate
    # u2's purchase (ts T0+1000) reached the broker at T0+1500; u1's event was late too,
    # but reached it before u1's stray action: the engine had it in time
    late = {"u2": [(T0 + 1_000, T0 + 1_500)], "u1": [(T0 + 200, T0 + 1_000)]}
    counts = tally(expected, live, late=late)
    assert (counts.excused, counts.unexpected, counts.duplicate) == (2, 1, 1)
    assert counts.examples["unexpected"] == ["c" * 32]
    assert tally(expected, live).unexpected == 3  # nothing excused without late events


def test_recovery_is_measured_from_each_fault_end() -> None:
    def emitted(ms: int, ingested: int | None) -> Emitted:
        action = {"action_id": str(ms)} | ({} if ingested is None else {"ingested_at": ingested})
        return Emitted(action=action, kafka_ms=ms)

    out = [
        emitted(10_500, 2_000),  # first action after the fault at 10 s: a backlog one
        emitted(12_000, None),  # a timer
        emitted(13_000, 12_600),  # live again: 400 ms from Kafka to action
        emitted(30_000, 29_900),
    ]
    rec = recovery([10_000, 20_000, 40_000], out)
    assert rec.first_action_s == [0.5, 10.0, None]
    assert rec.caught_up_s == [3.0, 10.0, None]
    assert (rec.worst_first_s, rec.worst_caught_up_s, rec.unrecovered) == (10.0, 10.0, 1)


def test_poison_is_matched_by_bytes_and_needs_a_reason() -> None:
    sent = [Poison(kind=k, value=poison_value(k, n, "u1", T0)) for n, k in enumerate(POISON_KINDS)]
    reason = {"tetik.error.reason": b"not valid JSON"}
    dlq = [(p.value, reason) for p in sent[2:]] + [(sent[1].value, {})]
    letters = dead_letters(sent, [*dlq, (b"someone else's", reason)])
    assert (letters.sent, letters.dead_lettered, letters.without_reason) == (11, 10, 1)
    assert letters.missed_by_kind == {POISON_KINDS[0]: 1}
    assert letters.reasons == {"not valid JSON": 9}
    assert not letters.complete


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_every_poison_kind_is_refused_by_the_contract(kind: str) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(poison_value(kind, 1, "u00001", T0))


def test_the_stream_is_seeded_and_mixes_about_one_percent_of_poison() -> None:
    first = list(itertools.islice(stream(3, 100, 0.01), 5_000))
    again = list(itertools.islice(stream(3, 100, 0.01), 5_000))
    assert [r.value(T0) for r in first] == [r.value(T0) for r in again]
    share = sum(1 for r in first if r.kind) / len(first)
    assert 0.005 < share < 0.015
    clean = [r.value(T0) for r in itertools.islice(stream(3, 100), 100)]
    assert clean == [r.value(T0) for r in first if not r.kind][:100]  # same good events
    for record in clean:
        assert decode_event(record).ts == T0


def test_verdicts_and_table_say_what_failed() -> None:
    size = sizes(short=False)
    good = verdict(
        Result(scenario="kill", verdict="pass", expected=10, segment_expected=2, emitted=10), size
    )
    bad = verdict(
        Result(scenario="poison", verdict="pass", expected=10, segment_expected=2, emitted=11,
               duplicate=1, poison_sent=5, dead_lettered=4, throughput_ratio=0.5),
        size,
    )  # fmt: skip
    skipped = Result(scenario="broker-restart", verdict="skipped", why="no Java here")
    assert good.verdict == "pass"
    assert not good.why
    assert bad.verdict == "FAIL"
    assert bad.why == ("1 duplicate; 1 poison not dead-lettered; throughput ratio 0.5 below 0.95")
    # The short run reports the ratio but does not judge it (too short to resolve 5 %).
    slow = Result(scenario="poison", verdict="pass", expected=10, segment_expected=2,
                  emitted=10, poison_sent=5, dead_lettered=5, throughput_ratio=0.5)  # fmt: skip
    assert verdict(slow, sizes(short=True)).verdict == "pass"
    unchecked = verdict(Result(scenario="kill", verdict="pass", expected=10, emitted=10), size)
    assert unchecked.why == "replay expected no segment-triggered action: segments went unchecked"
    text = table([good, bad, skipped])
    assert "poison: FAIL: 1 duplicate" in text
    assert "broker-restart: skipped: no Java here" in text
    assert sizes(short=False, kills=7).kills == 7
