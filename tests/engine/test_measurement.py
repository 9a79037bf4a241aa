"""Measuring journeys (engine.measurement): exact counts on a hand-written log.

The log: six shoppers add to cart in a journey with a 10 % holdout, a split
a/b and a purchase goal within 3 days. Their assignment is the blake2b rule's
(u1, u2: a; u4, u5: b; u11, u24: holdout, whose split arms are a and b).
"""

from __future__ import annotations

from collections import Counter

import orjson

from engine.actions import Action
from engine.experiments import Measure
from engine.journeys import Engine
from engine.measurement import ReportRow, field, rows, tally
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.uplift import uplift, wilson
from tests.engine.test_experiments import DAY, HOUR, SPLIT_RULES, T0, doc

RULES = SPLIT_RULES  # the experiments tests' journey: holdout, split, goal


def run(lines: list[bytes], received: int = T0 + 400 * DAY) -> tuple[list[Action], list[Measure]]:
    engine = Engine(load_rules(RULES, "x.yaml"))
    engine.measures = []
    actions = replay(engine, lines, drain=True, received=received)
    return actions, engine.measures


def the_log(start: int = T0, received: int = T0 + 400 * DAY) -> list[bytes]:
    """The carts and purchases, then engagement with four of the first pass's sends
    (the action ids are the replay's: the same live)."""
    lines = [doc("add_to_cart", start, u) for u in ("u1", "u2", "u4", "u5", "u11", "u24")]
    lines += [
        doc("purchase", start + 2 * HOUR, "u2"),  # a, converted
        doc("purchase", start + DAY, "u1"),  # a, converted
        doc("purchase", start + 2 * DAY, "u11"),  # holdout, converted
        doc("purchase", start + 5 * DAY, "u4"),  # b, after the goal's 3 days: not converted
    ]
    actions, _ = run(lines, received)
    sent = {(a.user_id, a.channel): a.action_id for a in actions if a.status == "sent"}
    engagement = [
        ("u1", "email", "delivered"),
        ("u1", "push", "clicked"),
        ("u4", "sms", "opened"),
        ("u5", "sms", "delivered"),
    ]
    for user, channel, kind in engagement:
        action = sent[(user, channel)]
        lines.append(
            doc("engagement", start + 3 * HOUR, user, action_id=action, channel=channel, kind=kind)
        )
    lines.append(
        doc(
            "engagement", start + 3 * HOUR, "u5", action_id="unknown", channel="sms", kind="clicked"
        )
    )
    return sorted(lines, key=lambda line: orjson.loads(line)["ts"])


def by_key(report: list[ReportRow]) -> dict[tuple[str, str], ReportRow]:
    return {(row.step, row.variant): row for row in report}


def test_exact_counts_per_group_and_step() -> None:
    actions, measures = run(the_log())
    report = by_key(rows(tally(actions, measures)))
    assert sorted(report) == [
        ("", ""),
        ("", "*"),
        ("", "a"),
        ("", "b"),
        ("", "holdout"),
        ("0", ""),
        ("0", "holdout"),
        ("1.a.1", "a"),
        ("1.a.1", "holdout"),
        ("1.b.1", "b"),
        ("1.b.1", "holdout"),
    ]
    groups = {variant: report[("", variant)] for variant in ("", "a", "b", "holdout")}
    assert {v: r.entered for v, r in groups.items()} == {"": 0, "a": 2, "b": 2, "holdout": 2}
    assert {v: r.converted for v, r in groups.items()} == {"": 0, "a": 2, "b": 0, "holdout": 1}
    assert groups[""].sent == {"email": 4}
    assert groups[""].delivered == 1
    assert groups["a"].sent == {"push": 2}
    assert groups["a"].clicked == 1
    assert groups["b"].sent == {"sms": 2}
    assert (groups["b"].opened, groups["b"].delivered) == (1, 1)
    assert groups["holdout"].sent == {}
    assert groups["holdout"].suppressed == {"email:holdout": 2, "push:holdout": 1, "sms:holdout": 1}
    assert report[("1.a.1", "a")].clicked == 1
    assert report[("1.a.1", "a")].sent == {"push": 2}
    assert report[("0", "")].delivered == 1
    assert report[("0", "")].clicked == 0
    # counts add up: the groups' entrants are the entered measures, sends the actions
    assert sum(r.entered for r in groups.values()) == sum(m.kind == "entered" for m in measures)
    per_step = Counter[str]()
    for row in report.values():
        if row.step:
            per_step.update(row.sent)
    assert per_step == Counter(a.channel for a in actions if a.status == "sent")


def test_rates_and_uplift_are_engine_uplift() -> None:
    actions, measures = run(the_log())
    report = by_key(rows(tally(actions, measures)))
    a, b, held = report[("", "a")], report[("", "b")], report[("", "holdout")]
    rate = wilson(1, 2)
    assert rate is not None
    assert (held.rate, held.rate_low, held.rate_high) == (
        rate.rate,
        rate.low,
        rate.high,
    )
    lift = uplift((2, 2), (1, 2))
    assert lift is not None
    assert (a.uplift, a.uplift_low, a.uplift_high, a.relative) == (
        lift.difference,
        lift.low,
        lift.high,
        lift.relative,
    )
    star = report[("", "*")]  # everyone not held out: the journey's effect
    assert (star.entered, star.converted, star.sent) == (4, 2, {"email": 4, "push": 2, "sms": 2})
    lift = uplift((2, 4), (1, 2))
    assert lift is not None
    assert (star.uplift, star.uplift_low, star.uplift_high) == (
        lift.difference,
        lift.low,
        lift.high,
    )
    assert b.uplift == -0.5
    assert b.relative == -1.0
    assert held.uplift is None  # the holdout is the baseline


def test_journey_filter_and_no_holdout_means_no_uplift() -> None:
    counts = Counter(
        {
            field("x", "", "", "entered"): 3,
            field("x", "", "", "converted"): 1,
            field("x", "0", "", "sent", "email"): 3,
            field("cart", "", "holdout", "entered"): 1,
        }
    )
    row, step = rows(counts, "x")
    assert (step.step, step.sent, step.entered) == ("0", {"email": 3}, 0)
    assert (row.entered, row.converted, row.sent, row.uplift) == (3, 1, {"email": 3}, None)
    assert row.rate is not None
    assert abs(row.rate - 1 / 3) < 1e-12
    found = [(r.journey, r.variant, r.entered) for r in rows(counts)]
    assert found == [("cart", "*", 0), ("cart", "holdout", 1), ("x", "", 3), ("x", "", 0)]


SEGMENT_RULES = """\
version: 1
consent: {email: opt_out}
segments:
  buyer: "count(purchase, 30d) >= 1"
journeys:
  - id: thanks
    trigger: {segment: buyer}
    steps:
      - send: email
  - id: cart
    trigger: add_to_cart
    holdout: 50%
    goal: {event: purchase, within: 3d}
    steps:
      - send: email
"""


def segment_log(start: int = T0) -> list[bytes]:
    """u1 and u4 are held out (50 %); u1 and u2 bought before: in segment buyer."""
    lines = [doc("purchase", start - DAY, u) for u in ("u1", "u2")]
    lines += [doc("add_to_cart", start, u) for u in ("u1", "u2", "u3", "u4")]
    lines += [doc("purchase", start + HOUR, u) for u in ("u1", "u2", "u3")]
    return lines


def test_per_segment_rows_count_the_watched_segments_at_entry() -> None:
    engine = Engine(load_rules(SEGMENT_RULES, "x.yaml"))
    engine.measures = []
    actions = replay(engine, segment_log(), drain=True, received=T0 + 400 * DAY)
    report = rows(tally(actions, engine.measures), "cart")
    found = [(r.segment, r.variant, r.entered, r.converted) for r in report if not r.step]
    assert found == [
        ("", "", 2, 2),  # no split: every entrant not held out, as "*"
        ("", "*", 2, 2),
        ("", "holdout", 2, 1),
        ("buyer", "*", 1, 1),
        ("buyer", "holdout", 1, 1),
    ]
    buyers = next(r for r in report if r.segment == "buyer" and r.variant == "*")
    lift = uplift((1, 1), (1, 1))
    assert lift is not None
    assert (buyers.uplift, buyers.uplift_low, buyers.uplift_high) == (
        lift.difference,
        lift.low,
        lift.high,
    )
    assert buyers.sent == {}  # sends are not split by segment
