"""The journeys graph: every kind of step as a box, branches and splits as columns, counts
on the boxes they belong to, and the rules file's text escaped."""

from __future__ import annotations

from engine.rules.loader import load_rules
from flows.console.counts import by_step
from flows.console.graph import journey_graph

RULES = b"""
version: 1
journeys:
  - id: cart
    trigger: {event: add_to_cart, if: "cart.total > 10"}
    holdout: 5%
    goal: {event: purchase, within: 2d}
    exit: [{event: purchase}]
    steps:
      - wait: 1h
      - if: "profile.vip == true"
        then:
          - send: email
        else:
          - split: {a: 30, b: 70}
            a: [{send: push}]
            b: [{wait: {until: "10:00"}}, {send: sms}, exit]
"""


def test_every_step_kind_is_a_box_in_its_column() -> None:
    journey = load_rules(RULES, "r.yaml").journeys[0]
    counts = by_step(
        {
            "cart||||": 0,
            "cart|||entered||": 40,
            "cart||holdout|entered||": 2,
            "cart|1.else.0.b.1|b|sent|sms|": 7,
            "cart|1.else.0.b.1|b|suppressed|sms|capped": 1,
            "other|0||sent|email|": 5,
            "not|a|field": 3,
        }
    )
    assert counts == {
        "cart": {
            "entry": {"entered": 42, "holdout": 2},
            "1.else.0.b.1": {"sent": 7, "suppressed": 1},
        },
        "other": {"0": {"sent": 5}},
    }
    drawn = str(journey_graph(journey, counts["cart"]))
    for kind, path in [
        ("trigger", "entry"),
        ("wait", "0"),
        ("branch", "1"),
        ("send", "1.then.0"),
        ("split", "1.else.0"),
        ("send", "1.else.0.a.0"),
        ("wait", "1.else.0.b.0"),
        ("send", "1.else.0.b.1"),
        ("exit", "1.else.0.b.2"),
    ]:
        assert f'<div class="node {kind}" data-path="{path}">' in drawn
    assert "if cart.total &gt; 10" in drawn  # escaped
    assert "holdout 5 %" in drawn
    assert "goal purchase within 2d" in drawn
    assert "exits on purchase" in drawn
    assert "a (30 %)" in drawn
    assert "b (70 %)" in drawn
    assert "wait until 10:00 local" in drawn
    assert 'data-measure="sent">sent 7' in drawn
    assert 'data-measure="entered">entered 42' in drawn
    assert 'data-measure="holdout">holdout 2' in drawn
    # arms go on after their fork: only the journey's own column ends in "end"
    assert drawn.count('class="node end"') == 1
    assert drawn.endswith('<div class="node end">end</div></div></div>')
