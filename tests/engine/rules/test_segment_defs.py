"""The rules file's `segments:`, segment triggers and broadcasts (SPEC section 9) at load."""

from __future__ import annotations

import textwrap

import pytest

from engine.errors import RulesError
from engine.rules import segment_defs
from engine.rules.loader import load_rules
from engine.rules.model import Deps, Rules
from engine.rules.parser import parse


def load(text: str) -> Rules:
    return load_rules(textwrap.dedent(text).lstrip("\n"), "r.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        load(text)
    return info.value.problems


def test_segments_compile_with_defaults_and_summary() -> None:
    rules = load(
        """
        version: 1
        segments:
          loyal: "count(purchase, 365d) >= 5"
          champions: "in_segment('loyal') and sum(purchase, revenue) > 500"
        journeys:
          - {id: w, trigger: {segment: champions, on: exit}, steps: [{send: email}]}
          - id: bf
            trigger: {schedule: "2026-11-20T09:00", segment: loyal, local: true}
            steps: [{send: email}]
        """
    )
    assert list(rules.segments) == ["loyal", "champions"]  # file order
    assert rules.segment_recheck == 3_600_000
    exit_trigger, broadcast = (j.trigger for j in rules.journeys)
    assert (exit_trigger.event, exit_trigger.segment, exit_trigger.on) == ("", "champions", "exit")
    assert broadcast.schedule is not None
    assert broadcast.schedule.local
    assert (broadcast.schedule.wall.day, broadcast.schedule.wall.hour) == (20, 9)
    # champions depends on loyal's window too: it changes when loyal's 5th newest purchase
    # leaves the 365d window; loyal only falls with time, the sum without WITHIN is constant.
    champions = rules.segments["champions"].deps
    assert champions.ranks == {("purchase", 365 * 86_400_000, 5)}
    assert not champions.agings
    assert (rules.segments["loyal"].deps.drift, champions.drift) == ("falls", "falls")


def test_event_and_entry_are_refused_in_a_segment_with_a_suggestion() -> None:
    found = problems(
        """
        version: 1
        segments:
          a: "event.price > 3"
          b: "count(purchase) > 1 and entry.product_id == 'x'"
          c: "engaged(email)"
        journeys: []
        """
    )
    assert found == [
        "r.yaml:3:7: segment a: 'event' is not available in a segment: a segment is about the "
        "user, not one event; read the stored events instead, e.g. last(view_product, price) or "
        "exists(view_product, 24h, it.price == ...)",
        "r.yaml:4:31: segment b: 'entry' is not available in a segment: a segment is about the "
        "user, not one event; read the stored events instead, e.g. last(view_product, "
        "product_id) or exists(view_product, 24h, it.product_id == ...)",
        "r.yaml:5:7: segment c: engaged() is about one enrollment's actions and a segment has "
        "none; count the engagement events instead, e.g. exists(engagement, 30d, it.channel == "
        "'email' and it.kind == 'clicked')",
    ]


def test_unknown_segments_get_a_suggestion() -> None:
    found = problems(
        """
        version: 1
        segments:
          loyal: "count(purchase) > 3"
        journeys:
          - id: x
            trigger: {event: view_product, if: "in_segment('loyl')"}
            steps: [{send: email}]
          - {id: y, trigger: {segment: loyl}, steps: [{send: email}]}
          - {id: z, trigger: view_product, audience: "in_segment(loyal)", steps: [{send: email}]}
        """
    )
    assert found == [
        "r.yaml:6:52: journey x trigger.if: unknown segment 'loyl' (did you mean 'loyal'?)",
        "r.yaml:8:32: unknown segment 'loyl' (did you mean 'loyal'?)",
        "r.yaml:9:58: journey z audience: quote the segment name: in_segment('loyal')",
    ]


def test_segments_that_use_each_other_in_a_cycle_are_refused() -> None:
    found = problems(
        """
        version: 1
        segments:
          a: "in_segment('b') and count(purchase) > 1"
          b: "exists(signup) and in_segment('c')"
          c: "in_segment('a')"
          d: "in_segment('d')"
          e: "in_segment('a')"
        journeys: []
        """
    )
    assert found == [
        "r.yaml:5:7: segment c: segments use each other in a cycle: a -> b -> c -> a; a segment "
        "cannot depend on itself, directly or through others",
        "r.yaml:6:7: segment d: segments use each other in a cycle: d -> d; a segment cannot "
        "depend on itself, directly or through others",
    ]


def test_trigger_and_setting_problems() -> None:
    found = problems(
        """
        version: 1
        segment_recheck: 30s
        segments:
          Loyal: "true"
          ok: "true"
        journeys:
          - {id: a, trigger: {segment: ok}, key: product_id, steps: [{send: email}]}
          - {id: b, trigger: {segment: ok, on: leave}, steps: [{send: email}]}
          - {id: c, trigger: {schedule: "2026-11-31T09:00"}, steps: [{send: email}]}
          - {id: d, trigger: {schedule: "2026-11-20T09:00+03:00"}, steps: [{send: email}]}
          - {id: e, trigger: {schedule: "2026-11-20T09:00", local: yes}, steps: [{send: email}]}
        """
    )
    wall = (
        'is not a wall time; write YYYY-MM-DDTHH:MM, e.g. "2026-11-20T09:00" (the rules\' '
        "timezone, or each user's with local: true)"
    )
    assert found == [
        "r.yaml:2:18: segment_recheck must be at least 1m (each recheck evaluates segments)",
        "r.yaml:4:3: segment name 'Loyal' must match [a-z0-9_-]+",
        "r.yaml:7:37: journey a: `key` needs an event trigger; a segment or schedule trigger "
        "has no event to take the key from (remove `key`)",
        "r.yaml:8:40: on 'leave' must be enter or exit",
        f"r.yaml:9:33: schedule '2026-11-31T09:00' {wall}",
        f"r.yaml:10:33: schedule '2026-11-20T09:00+03:00' {wall}",
        "r.yaml:11:60: local 'yes' must be true or false",
    ]


@pytest.mark.parametrize(
    ("text", "deps"),
    [
        ("count(purchase) >= 2", Deps(types=frozenset({"purchase"}), drift="const")),
        (
            "cart.total > 100",
            Deps(types=frozenset({"add_to_cart", "remove_from_cart", "purchase"}), drift="const"),
        ),
        (
            "favorited('p1')",
            Deps(types=frozenset({"add_favorite", "remove_favorite"}), drift="const"),
        ),
        ("profile.vip == true", Deps(types=frozenset({"profile"}), drift="const")),
        (
            "count(view_product, 24h, it.price > 5) >= 3",
            Deps(
                types=frozenset({"view_product"}),
                agings=frozenset({("view_product", 86_400_000)}),
                drift="falls",
                delays=frozenset({"view_product"}),
            ),
        ),
        (
            "count(view_product, 24h) >= 3",
            Deps(
                types=frozenset({"view_product"}),
                ranks=frozenset({("view_product", 86_400_000, 3)}),
                drift="falls",
                delays=frozenset({"view_product"}),
            ),
        ),
        (
            "4 >= count(search, 1h) or count(search, 1h) < 0",
            Deps(
                types=frozenset({"search"}),
                ranks=frozenset({("search", 3_600_000, 5)}),
                drift="rises",
                delays=frozenset({"search"}),
            ),
        ),
        (
            "since(purchase) > 30d",
            Deps(
                types=frozenset({"purchase"}),
                thresholds=frozenset({("purchase", 2_592_000_000)}),
                drift="rises",
            ),
        ),
        (
            "now >= 1700000000000",
            Deps(moments=frozenset({1_700_000_000_000}), drift="rises"),
        ),
        (
            "since(purchase) * 2 > 30d",
            Deps(types=frozenset({"purchase"}), continuous=True),
        ),
        (
            "exists(view_product, 1h) and since(purchase) > 1d",
            Deps(
                types=frozenset({"view_product", "purchase"}),
                thresholds=frozenset({("view_product", 3_600_000), ("purchase", 86_400_000)}),
                delays=frozenset({"view_product"}),  # since(purchase) is null before one
            ),
        ),
        (
            "exists(view_product, 1h) and count(view_product) < 9 and cart.count > 1",
            Deps(
                types=frozenset({"view_product", "add_to_cart", "remove_from_cart", "purchase"}),
                thresholds=frozenset({("view_product", 3_600_000)}),
                drift="falls",  # the 1h window only empties; the rest is constant in time
            ),
        ),
        ("count('checkout.step', 1h, it.ts > now - 5m) > 0", None),
    ],
)
def test_dependency_analysis(text: str, deps: Deps | None) -> None:
    rules = load(f'version: 1\nsegments:\n  s: "{text}"\njourneys: []\n')
    found = rules.segments["s"].deps
    if deps is None:  # `now` inside a WHERE: any moment may change it
        assert found.continuous
        assert found.types == {"checkout.step"}
    else:
        assert found == deps


def test_a_function_the_analysis_does_not_know_depends_on_everything() -> None:
    # rfm() and later functions: re-evaluated after every event and at every instant.
    assert segment_defs.analyse(parse("rfm_score() > 3"), {}) == segment_defs.EVERYTHING
    assert segment_defs.EVERYTHING.every_type
    assert segment_defs.EVERYTHING.continuous
