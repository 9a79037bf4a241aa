"""Segments and their triggers in the core (SPEC section 9), one scenario per rule.

Times are UTC on 2024-05-06 unless a test says otherwise; the expected actions
are worked out by hand from the rules (engine/segments.py states them).
"""

from __future__ import annotations

import itertools
import random
import textwrap
from collections.abc import Iterable
from typing import Any

import orjson

from engine.actions import Action
from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.rules.model import Rules
from engine.segments import latest_event, members_at
from engine.state import UserState, dumps, loads

Row = tuple[int, str, str, str, str, str]  # at, user, journey, step, channel, status
_serial = itertools.count()
HOUR = 3_600_000
DAY = 24 * HOUR


def load(text: str) -> Rules:
    return load_rules(textwrap.dedent(text), "test.yaml")


def utc(hm: str, day: int = 0) -> int:
    return parse_ts(f"2024-05-06T{hm}:00Z") + day * DAY


def doc(kind: str, ts: int, user: str = "u1", **fields: Any) -> bytes:
    body = {"event_id": f"e{next(_serial)}", "type": kind, "ts": ts, "user_id": user}
    return orjson.dumps({**body, **fields})


def event(kind: str, ts: int, user: str = "u1", **fields: Any) -> Event:
    return decode_event(doc(kind, ts, user, **fields))


def row(action: Action) -> Row:
    return (action.at, action.user_id, action.journey, action.step, action.channel, action.status)


def run(rules: Rules | Engine, lines: Iterable[bytes], *, until: int | None = None) -> list[Row]:
    engine = rules if isinstance(rules, Engine) else Engine(rules)
    return [row(a) for a in replay(engine, list(lines), until=until)]


MEMBERSHIP = """
    version: 1
    consent: {email: opt_out}
    templates:
      t:
        email: {subject: "{{ entry.type }} {{ entry.product_id }}"}
    segments:
      repeat_buyer: "count(purchase) >= 2"
      browsing: "exists(view_product, 2h)"
      big_cart: "cart.total >= 100"
      unwatched: "count(view_product) >= 1"
    journeys:
      - id: repeat
        trigger: {segment: repeat_buyer}
        steps: [{send: email, template: t}]
      - id: cart_push
        trigger: {segment: big_cart}
        steps: [{send: email, template: t}]
      - id: cart_gone
        trigger: {segment: big_cart, on: exit}
        steps: [{send: email, template: t}]
      - id: gone
        trigger: {segment: browsing, on: exit}
        steps: [{send: email, template: t}]
"""


def membership_log() -> list[bytes]:
    return [
        doc("purchase", utc("10:00")),
        doc("view_product", utc("10:10"), product_id="p1"),
        doc("add_to_cart", utc("10:20"), product_id="p2", price=60),
        doc("add_to_cart", utc("10:30"), product_id="p3", price=50),
        doc("purchase", utc("11:00")),  # no items: the whole cart goes
    ]


def test_memberships_follow_events_and_time() -> None:
    engine = Engine(load(MEMBERSHIP))
    state = UserState(key="u1")
    seen: list[tuple[int, dict[str, int]]] = []
    for line in membership_log():
        e = decode_event(line)
        engine.on_event(state, e, e.ts)
        seen.append((e.ts, dict(state.segments)))
    assert seen == [
        (utc("10:00"), {}),
        (utc("10:10"), {"browsing": utc("10:10")}),
        (utc("10:20"), {"browsing": utc("10:10")}),
        (utc("10:30"), {"browsing": utc("10:10"), "big_cart": utc("10:30")}),
        (utc("11:00"), {"browsing": utc("10:10"), "repeat_buyer": utc("11:00")}),
    ]
    # The view leaves its 2h window at 12:10:00.001; the next recheck instant is 13:00.
    assert engine.advance(state, utc("12:59")) == []
    assert [row(a) for a in engine.advance(state, utc("13:00"))] == [
        (utc("13:00"), "u1", "gone", "0", "email", "sent")
    ]
    assert state.segments == {"repeat_buyer": utc("11:00")}
    assert state.clock == utc("13:00")
    # A segment no journey watches is not stored; members_at evaluates every segment.
    assert members_at(engine.rules, state, utc("13:00")) == ["repeat_buyer", "unwatched"]


def test_enter_and_exit_actions_with_their_entry() -> None:
    engine = Engine(load(MEMBERSHIP))
    lines = [*membership_log(), doc("view_product", utc("13:30"), user="u2", product_id="p9")]
    actions = {(a.journey, a.at): a for a in replay(engine, lines)}
    assert sorted(actions) == [
        ("cart_gone", utc("11:00")),  # the purchase emptied the cart
        ("cart_push", utc("10:30")),
        ("gone", utc("13:00")),  # the clock stops at 13:30: the 13:00 instant ran
        ("repeat", utc("11:00")),
    ]
    content = {k[0]: (a.content or {}).get("subject") for k, a in actions.items()}
    assert content == {
        "cart_push": "add_to_cart p3",  # the event being handled
        "cart_gone": "purchase ",
        "repeat": "purchase ",
        "gone": "purchase ",  # the newest stored record at the instant (11:00)
    }


def test_latest_event_is_rebuilt_from_the_newest_record() -> None:
    engine = Engine(load(MEMBERSHIP))
    state = UserState(key="u1")
    for line in membership_log()[:3]:
        e = decode_event(line)
        engine.on_event(state, e, e.ts)
    rebuilt = latest_event(state)
    assert rebuilt is not None
    assert (rebuilt.type, rebuilt.ts, rebuilt.product_id, rebuilt.price) == (
        "add_to_cart",
        utc("10:20"),
        "p2",
        60,
    )
    assert rebuilt.user_id == "u1"
    assert rebuilt.event_id.startswith("stored:")
    assert latest_event(UserState(key="u9")) is None


THRESHOLD = """
    version: 1
    consent: {email: opt_out}
    templates:
      t:
        email: {subject: "{{ entry.type }} {{ entry.product_id }}"}
    segments:
      lapsed: "since(view_product) > 1h"
      lapsed_buyer: "since(purchase) > 1d"
    journeys:
      - id: come_back
        trigger: {segment: lapsed}
        reentry: always
        steps: [{send: email, template: t}]
      - id: buy_again
        trigger: {segment: lapsed_buyer}
        steps: [{send: email, template: t}]
"""


def test_time_only_changes_are_caught_at_the_next_instant() -> None:
    rules = load(THRESHOLD)
    lines = [
        doc("view_product", utc("10:00"), product_id="p9"),
        doc("purchase", utc("10:00", day=0), user="u2"),
        doc("view_product", utc("12:30"), product_id="p8"),  # back: lapsed is left
        doc("login", utc("12:00", day=2), user="u3"),  # moves the clock on
    ]
    engine = Engine(rules)
    actions = replay(engine, lines)
    # since(view) > 1h flips at 11:00:00.001, so 12:00 is the first instant that sees it;
    # after the 12:30 view, at 13:31 -> instant 14:00. since(purchase) > 1d: day 1 11:00.
    assert [(row(a)[:3], (a.content or {}).get("subject")) for a in actions] == [
        ((utc("12:00"), "u1", "come_back"), "view_product p9"),
        ((utc("14:00"), "u1", "come_back"), "view_product p8"),
        ((utc("11:00", day=1), "u2", "buy_again"), "purchase "),
    ]


def test_instants_are_the_same_however_often_advance_runs() -> None:
    """Replay advances each user once at the end; live, a sweep advances them often:
    the actions are the same, and the same as evaluating at every instant."""
    text = """
        version: 1
        consent: {email: opt_out}
        segment_recheck: 30m
        segments:
          fast: "count(view_product, 3h) >= 2"
          slow: "count(view_product, 3h) >= 2 and (now - now) == 0"
        journeys:
          - {id: fast_in, trigger: {segment: fast}, reentry: always, steps: [send: email]}
          - {id: fast_out, trigger: {segment: fast, on: exit}, reentry: always, steps: [send: sms]}
          - {id: slow_in, trigger: {segment: slow}, reentry: always, steps: [send: email]}
          - {id: slow_out, trigger: {segment: slow, on: exit}, reentry: always, steps: [send: sms]}
    """
    rules = load(text)
    slow = rules.segments["slow"].deps
    assert slow.continuous
    assert not rules.segments["fast"].deps.continuous
    chance = random.Random(5)
    log = sorted(
        (utc("08:00") + chance.randrange(0, 2 * DAY), f"u{chance.randrange(4)}") for _ in range(60)
    )
    events = [event("view_product", ts, user, product_id="p") for ts, user in log]
    end = utc("12:00", day=3)

    def timeline(step: int | None) -> list[tuple[int, str, str]]:
        engine = Engine(rules)
        states: dict[str, UserState] = {}
        out: list[Action] = []
        moments = [] if step is None else list(range(utc("08:00"), end, step))
        for e in events:
            while moments and moments[0] < e.ts:
                for state in states.values():
                    out.extend(engine.advance(state, moments[0]))
                moments.pop(0)
            state = states.setdefault(e.key, UserState(key=e.key))
            out.extend(engine.on_event(state, e, e.ts))
        for state in states.values():
            out.extend(engine.advance(state, end))
        return sorted((a.at, a.user_id, a.journey) for a in out)

    once = timeline(None)
    assert once == timeline(7 * 60_000) == timeline(HOUR)
    fast = [(at, user, j.replace("fast", "x")) for at, user, j in once if j.startswith("fast")]
    slow_rows = [(at, user, j.replace("slow", "x")) for at, user, j in once if j.startswith("slow")]
    assert fast == slow_rows  # skipping instants without a change point changes nothing
    exits = [at for at, _, j in once if j == "fast_out"]
    assert exits
    assert all(at % (30 * 60_000) == 0 for at in exits)


def test_in_segment_in_audience_and_step_conditions() -> None:
    text = """
        version: 1
        consent: {email: opt_out, push: opt_out}
        segments:
          vip: "sum(purchase, revenue) >= 1000"
        journeys:
          - id: vip_view
            trigger: view_product
            audience: "in_segment('vip')"
            reentry: always
            steps:
              - if: "in_segment('vip') and cart.count == 0"
                then: [{send: email}]
                else: [{send: push}]
    """
    lines = [
        doc("view_product", utc("10:00"), product_id="p1"),  # not vip yet: no entry
        doc("purchase", utc("10:05"), revenue=1200),
        doc("view_product", utc("10:10"), product_id="p1"),
        doc("add_to_cart", utc("10:15"), product_id="p1", price=5),
        doc("view_product", utc("10:20"), product_id="p1"),
        doc("purchase", utc("10:00"), user="u2", revenue=999),
        doc("view_product", utc("10:30"), user="u2", product_id="p1"),
    ]
    assert run(load(text), lines) == [
        (utc("10:10"), "u1", "vip_view", "0.then.0", "email", "sent"),
        (utc("10:20"), "u1", "vip_view", "0.else.0", "push", "sent"),
    ]


def test_event_triggers_come_before_segment_triggers() -> None:
    text = """
        version: 1
        consent: {email: opt_out}
        caps: [{channel: any, max: 1, per: 1d}]
        segments:
          buyer: "exists(purchase)"
        journeys:
          - {id: welcome_buyer, trigger: {segment: buyer}, steps: [{send: email}]}
          - {id: thanks, trigger: purchase, steps: [{send: email}]}
    """
    actions = replay(Engine(load(text)), [doc("purchase", utc("10:00"))])
    assert [(a.journey, a.status, a.reason) for a in actions if a.journey == "thanks"] == [
        ("thanks", "sent", None)
    ]
    assert [(a.journey, a.status, a.reason) for a in actions if a.journey != "thanks"] == [
        ("welcome_buyer", "suppressed", "capped")  # file order loses to the event's journey
    ]


def test_next_due_leaves_recheck_instants_out_unless_asked() -> None:
    engine = Engine(load(MEMBERSHIP))
    state = UserState(key="u1")
    e = event("view_product", utc("10:10"), product_id="p1")
    engine.on_event(state, e, e.ts)
    assert engine.next_due(state) is None  # nothing for a shard's timer index
    assert engine.next_due(state, instants=True) == utc("13:00")


HOT_V1 = """
    version: 1
    consent: {email: opt_out}
    journeys:
      - {id: hello, trigger: signup, steps: [{send: email}]}
"""
HOT_V2 = """
    version: 1
    consent: {email: opt_out}
    segments:
      buyers: "count(purchase) >= 1"
    journeys:
      - {id: hello, trigger: signup, steps: [{send: email}]}
      - {id: buyer_in, trigger: {segment: buyers}, steps: [{send: email}]}
"""
HOT_V3 = """
    version: 1
    consent: {email: opt_out}
    segments:
      buyers: "count(purchase) >= 2"
    journeys:
      - {id: buyer_in, trigger: {segment: buyers}, steps: [{send: email}]}
      - {id: buyer_out, trigger: {segment: buyers, on: exit}, steps: [{send: email}]}
"""


def test_a_new_or_changed_segment_is_baselined_without_triggers() -> None:
    v1 = Engine(load(HOT_V1))
    old, new = UserState(key="u1"), UserState(key="u5")
    v1.on_event(old, event("purchase", utc("10:00")), utc("10:00"))
    v2 = v1.successor(load(HOT_V2))
    # u1 was already a buyer: the first evaluation under v2 is silent.
    assert v2.on_event(old, event("view_product", utc("11:00"), product_id="p"), utc("11:00")) == []
    assert old.segments == {"buyers": utc("10:00")}
    # u5 is new under v2: qualifying on the first event is an entry.
    fired = v2.on_event(new, event("purchase", utc("11:05"), "u5"), utc("11:05"))
    assert [(a.journey, a.at) for a in fired] == [("buyer_in", utc("11:05"))]
    v3 = v2.successor(load(HOT_V3))
    # The definition changed: u1 (one purchase) is out under v3, silently (no buyer_out).
    assert v3.on_event(old, event("view_product", utc("12:00"), product_id="p"), utc("12:00")) == []
    assert old.segments == {}
    # From the new baseline on, changes are enters and exits again.
    fired = v3.on_event(old, event("purchase", utc("12:30")), utc("12:30"))
    assert [(a.journey, a.at) for a in fired] == [("buyer_in", utc("12:30"))]
    # A version that watches nothing drops the stored memberships.
    v4 = v3.successor(load(HOT_V1))
    v4.on_event(old, event("login", utc("13:00")), utc("13:00"))
    assert (old.segments, old.segment_defs) == ({}, "")


def test_state_round_trip_keeps_memberships_and_clock() -> None:
    engine = Engine(load(MEMBERSHIP))
    state = UserState(key="u1")
    for line in membership_log():
        e = decode_event(line)
        engine.on_event(state, e, e.ts)
    again = loads(dumps(state))
    assert (again.segments, again.clock, again.segment_defs) == (
        state.segments,
        state.clock,
        state.segment_defs,
    )
    assert [row(a) for a in engine.advance(again, utc("13:00"))] == [
        (utc("13:00"), "u1", "gone", "0", "email", "sent")
    ]
    assert loads(dumps(UserState(key="x"))).segments == {}  # defaults stay out of old states
    assert b"segment" not in dumps(UserState(key="x"))


BROADCAST = """
    version: 1
    timezone: Europe/Istanbul
    quiet_hours: {start: "22:00", end: "09:00"}
    consent: {email: opt_out}
    segments:
      buyers: "count(purchase) >= 1"
    journeys:
      - id: bf_local
        trigger: {schedule: "2024-05-10T09:30", segment: buyers, local: true}
        steps: [{send: email}]
      - id: bf_global
        trigger: {schedule: "2024-05-10T09:30"}
        steps: [{send: email}]
"""


def z(text: str) -> int:
    return parse_ts(f"2024-05-{text}:00Z")


def broadcast_log() -> list[bytes]:
    return [
        doc("purchase", z("06T10:00")),  # u1: Istanbul (the rules' zone), a buyer
        doc("profile", z("06T10:00"), user="u2", attributes={"timezone": "America/New_York"}),
        doc("purchase", z("06T10:05"), user="u2"),  # u2: New York, a buyer
        doc("view_product", z("06T11:00"), user="u3", product_id="p"),  # u3: not a buyer
        doc("purchase", z("11T10:00"), user="u4"),  # u4: first seen after the broadcast
    ]


def test_broadcast_enrolls_members_once_in_their_time_zone() -> None:
    rows = run(load(BROADCAST), broadcast_log(), until=z("11T12:00"))
    assert rows == [
        # 09:30 Istanbul is 06:30Z: the global broadcast and u1's local one.
        (z("10T06:30"), "u1", "bf_global", "0", "email", "sent"),
        (z("10T06:30"), "u1", "bf_local", "0", "email", "sent"),
        (z("10T06:30"), "u3", "bf_global", "0", "email", "sent"),  # everyone known
        # 06:30Z is 02:30 in New York, inside quiet hours: deferred to 09:00 there.
        (z("10T13:00"), "u2", "bf_global", "0", "email", "sent"),
        (z("10T13:30"), "u2", "bf_local", "0", "email", "sent"),  # 09:30 in New York
    ]


def test_a_broadcast_interrupted_and_resumed_sends_nothing_twice() -> None:
    """A live sweep advances shoppers one by one and saves each state; after a crash
    it starts the page again from states saved before and after it."""
    engine = Engine(load(BROADCAST))
    states: dict[str, UserState] = {}
    for line in broadcast_log()[:4]:
        e = decode_event(line)
        state = states.setdefault(e.key, UserState(key=e.key))
        engine.on_event(state, e, e.ts)
    saved = {key: dumps(state) for key, state in states.items()}
    sweep = z("10T14:00")
    # The first pass writes u1 and crashes before u2 and u3.
    u1 = loads(saved["u1"])
    first = [row(a) for a in engine.advance(u1, sweep)]
    saved["u1"] = dumps(u1)
    # The pass starts again over the whole page, from what was saved.
    again: list[Row] = []
    for key in sorted(saved):
        state = loads(saved[key])
        again += [row(a) for a in engine.advance(state, sweep)]
        saved[key] = dumps(state)
    assert sorted(first) == [
        (z("10T06:30"), "u1", "bf_global", "0", "email", "sent"),
        (z("10T06:30"), "u1", "bf_local", "0", "email", "sent"),
    ]
    assert sorted(again) == [  # u1's saved state already held its broadcasts
        (z("10T06:30"), "u3", "bf_global", "0", "email", "sent"),
        (z("10T13:00"), "u2", "bf_global", "0", "email", "sent"),
        (z("10T13:30"), "u2", "bf_local", "0", "email", "sent"),
    ]
    for key in saved:  # and a later pass finds nothing left to send
        assert engine.advance(loads(saved[key]), z("12T00:00")) == []


def test_a_broadcast_past_when_its_version_took_over_is_not_sent() -> None:
    base = Engine(load(HOT_V1))
    state = UserState(key="u1")
    base.on_event(state, event("purchase", z("06T10:00")), z("06T10:00"))
    late = base.successor(load(BROADCAST), activated_at=z("10T12:00"))
    assert late.advance(loads(dumps(state)), z("10T20:00")) == []
    early = base.successor(load(BROADCAST), activated_at=z("09T00:00"))
    assert [a.journey for a in early.advance(state, z("10T20:00"))] == ["bf_local", "bf_global"]


def test_next_due_holds_broadcast_instants_but_not_recheck_instants() -> None:
    """A live shard's timer index fires each member at its own broadcast instant."""
    text = (
        BROADCAST.replace(
            '      buyers: "count(purchase) >= 1"\n',
            '      buyers: "count(purchase) >= 1"\n      fresh: "exists(view_product, 2h)"\n',
        )
        + "      - {id: stale, trigger: {segment: fresh, on: exit}, steps: [{send: email}]}\n"
    )
    engine = Engine(load(text))
    states: dict[str, UserState] = {}
    for line in broadcast_log()[:4]:
        e = decode_event(line)
        engine.on_event(states.setdefault(e.key, UserState(key=e.key)), e, e.ts)
    assert engine.next_due(states["u1"]) == z("10T06:30")  # 09:30 in Istanbul
    assert engine.next_due(states["u2"]) == z("10T06:30")  # bf_global (then quiet hours)
    # u3 viewed a product at 11:00: its rechecks that day are for a sweep, not the index
    assert z("06T11:00") < engine.next_due(states["u3"], instants=True) <= z("06T14:00")
    assert engine.next_due(states["u3"]) == z("10T06:30")
    engine.advance(states["u1"], z("10T06:30"))
    assert engine.next_due(states["u1"]) is None  # sent: nothing left to arm
    late = Engine(load(HOT_V1)).successor(load(text), activated_at=z("10T12:00"))
    assert late.next_due(states["u3"]) is None  # past when the version took over
    assert late.next_due(states["u2"]) == z("10T13:30")  # local: still ahead in New York
