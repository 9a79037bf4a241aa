"""Long history in journeys (SPEC section 8): the same answer in replay and live, pruned or not."""

# ruff: noqa: E501 (rules fixtures hold one-line expressions whose columns are asserted)

from __future__ import annotations

import copy
import itertools
import textwrap
from typing import Any

import orjson

from engine.actions import Action
from engine.events import decode_event, parse_ts
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.state import UserState, dumps, loads, prune
from engine.windows import config_from_mapping

_serial = itertools.count()
DAY = 86_400_000

DORMANT = """\
    version: 1
    timezone: Europe/Istanbul
    journeys:
      - id: winback
        trigger: login
        audience: "count(purchase, between(date('2023-01-01'), date('2024-01-01'))) > 3 and count(purchase, between(date('2024-01-01'), date('2025-01-01'))) == 0"
        reentry: always
        steps: [{send: email}]
      - id: big_spender
        trigger: {event: login, if: "sum(purchase, revenue, between(date('2023-01-01'), date('2024-01-01')), it.category == 'shoes') >= 300"}
        steps: [{send: push}]
      - id: never_bought
        trigger: login
        audience: "exists(signup) and count(purchase) == 0"
        steps: [{send: sms}]
"""


def line(event_type: str, ts: str, user: str, **fields: Any) -> bytes:
    body = {"event_id": f"j{next(_serial)}", "type": event_type, "ts": ts, "user_id": user}
    return orjson.dumps({**body, **fields})


def shoppers() -> list[bytes]:
    """u1: four purchases in 2023 (three older than the 400-day window by November 2024),
    none in 2024; u2: the same plus one in 2024; u3: signed up in 2022, never bought."""
    lines = []
    for user in ("u1", "u2"):
        for month, revenue in (("02", 100), ("04", 120), ("06", 90), ("10", 50)):
            lines.append(
                line(
                    "purchase",
                    f"2023-{month}-10T10:00:00+03:00",
                    user,
                    revenue=revenue,
                    category="shoes",
                )
            )
    lines.append(line("purchase", "2024-03-01T10:00:00+03:00", "u2", revenue=10))
    lines.append(line("signup", "2022-06-01T10:00:00+03:00", "u3"))
    for user in ("u1", "u2", "u3"):
        lines.append(line("login", "2024-11-01T10:00:00+03:00", user))
    return sorted(lines, key=lambda raw: parse_ts(orjson.loads(raw)["ts"]))


def rows(actions: list[Action]) -> list[tuple[str, str, str, int]]:
    return sorted((a.user_id, a.journey, a.channel, a.at) for a in actions)


def run_live(engine: Engine, lines: list[bytes], *, prune_each: bool, reload: bool) -> list[Action]:
    """Each event through Engine.handle as the live shard does, state saved and loaded
    between events (``reload``), pruned after each (``prune_each``) or never."""
    states: dict[str, bytes | UserState] = {}
    actions: list[Action] = []
    for raw in lines:
        event = decode_event(raw)
        held = states.get(event.key)
        state = loads(held) if isinstance(held, bytes) else (held or UserState(key=event.key))
        _, fired, caused = engine.handle(state, event, event.ts)
        actions += fired + caused
        if prune_each:
            prune(state, event.ts, engine.windows)
        states[event.key] = dumps(state) if reload else state
    return actions


def test_dormant_and_all_time_segments_are_the_same_pruned_or_not_replay_or_live() -> None:
    engine = Engine(load_rules(textwrap.dedent(DORMANT), "d.yaml"))
    lines = shoppers()
    at = parse_ts("2024-11-01T10:00:00+03:00")
    expected = [
        ("u1", "big_spender", "push", at),
        ("u1", "winback", "email", at),
        ("u2", "big_spender", "push", at),
        ("u3", "never_bought", "sms", at),
    ]
    assert rows(replay(engine, lines, drain=True)) == expected
    for prune_each in (False, True):
        for reload in (False, True):
            got = run_live(engine, lines, prune_each=prune_each, reload=reload)
            assert rows(got) == expected, (prune_each, reload)


def test_a_condition_gives_the_same_answer_whenever_prune_ran() -> None:
    """A window read with WHERE at a time when old records still sit unpruned in the state."""
    rules = load_rules(
        textwrap.dedent("""\
            version: 1
            journeys:
              - id: browsed
                trigger: {event: login, if: "count(view_product, it.price > 10) >= 2"}
                reentry: always
                steps: [{send: email}]
        """),
        "b.yaml",
    )
    engine = Engine(rules)
    lines = [
        line("view_product", "2024-01-01T10:00:00Z", "u", product_id="a", price=20),
        line("view_product", "2024-01-20T10:00:00Z", "u", product_id="b", price=20),
        line("login", "2024-01-21T10:00:00Z", "u"),  # both views count: an email
        line("login", "2024-02-05T10:00:00Z", "u"),  # the first is 35 days old: none
    ]
    expected = [("u", "browsed", "email", parse_ts("2024-01-21T10:00:00Z"))]
    assert rows(replay(engine, lines)) == expected
    for prune_each in (False, True):
        assert rows(run_live(engine, lines, prune_each=prune_each, reload=True)) == expected


def test_all_time_count_survives_the_window_and_first_since_first_work() -> None:
    rules = load_rules(
        textwrap.dedent("""\
            version: 1
            journeys:
              - id: third_visit_ever
                trigger: {event: view_product, if: "count(view_product) == 3 and since_first(view_product) > 60d"}
                steps: [{send: onsite}]
              - id: anniversary
                trigger: {event: login, if: "now - first(signup) >= 365d and first(signup) < date('2023-06-01')"}
                steps: [{send: email}]
        """),
        "a.yaml",
    )
    lines = [
        line("signup", "2023-05-01T10:00:00Z", "u"),
        line("view_product", "2024-01-01T10:00:00Z", "u", product_id="a"),
        line("view_product", "2024-02-15T10:00:00Z", "u", product_id="b"),
        line("view_product", "2024-04-01T10:00:00Z", "u", product_id="c"),
        line("login", "2024-05-02T10:00:00Z", "u"),
    ]
    assert rows(replay(Engine(rules), lines)) == [
        ("u", "anniversary", "email", parse_ts("2024-05-02T10:00:00Z")),
        ("u", "third_visit_ever", "onsite", parse_ts("2024-04-01T10:00:00Z")),
    ]


def test_the_engine_reads_months_in_the_rules_zone_and_retention_from_its_windows() -> None:
    text = """\
        version: 1
        timezone: Europe/Istanbul
        journeys:
          - id: january
            trigger: {event: login, if: "count(purchase, between(date('2024-01-01'), date('2024-02-01'))) == 1"}
            steps: [{send: email}]
    """
    # 2023-12-31T22:00Z is January 1st in Istanbul; 2024-01-31T21:30Z is February 1st there.
    lines = [
        line("purchase", "2023-12-31T22:00:00Z", "u", revenue=1),
        line("purchase", "2024-01-31T21:30:00Z", "u", revenue=1),
        line("login", "2025-06-01T10:00:00Z", "u"),  # both purchases older than the window
    ]
    engine = Engine(load_rules(textwrap.dedent(text), "z.yaml"))
    assert engine.windows.timezone == "Europe/Istanbul"
    assert [a.journey for a in replay(engine, lines)] == ["january"]
    # With purchases kept 30 days, the same answer comes from the buckets at once.
    short = config_from_mapping({"types": {"purchase": {"max_age": "30d"}}})
    engine = Engine(load_rules(textwrap.dedent(text), "z.yaml"), short)
    assert engine.windows.timezone == "Europe/Istanbul"
    assert [a.journey for a in replay(engine, lines)] == ["january"]
    state = UserState()
    for raw in lines:
        event = decode_event(raw)
        engine.handle(state, event, event.ts)
    held = copy.deepcopy(state)
    prune(held, parse_ts("2025-06-01T10:00:00Z"), engine.windows)
    assert "purchase" not in held.windows
    assert held.rollups["purchase"].n == 2
