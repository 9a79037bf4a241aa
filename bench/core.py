"""Pure-core throughput: the journey engine on a generated log, no I/O.

For 10, 100 and 1,000 journeys the same decoded log runs through
``Engine.on_event`` on the virtual clock (as ``tetik replay`` does), and the
per-event time is compared with the 10-journey run of the same process.
Replay end to end (JSONL bytes -> decode -> engine -> sorted actions) is
measured with the 100-journey rules.

Segments (SPEC section 9): the 10-journey rules again with 10 segments
defined, once with no journey watching them (one audience uses
``in_segment``) and once each watched by a ``trigger: {segment: S}`` journey
(memberships kept, re-evaluated after events and at hourly recheck
instants), as a ratio of per-event time to two baselines:

* ``none``: the plain 10-journey rules (the issue's "without segments");
* ``journeys``: the same 20 journeys without segments, each of the ten
  segment journeys triggered instead by the event that can make its
  condition true, with the condition as ``if`` (what one writes without
  segments). They send about as much (the bench prints both counts), so this
  ratio is what the segments themselves cost: like with like.

The journey mix: ten journeys on standard events (cart, browse, search,
favorite, welcome, post-purchase, win-back, category, consent, login) with
window conditions, waits, sends, branches, caps and quiet hours; beyond ten,
one in ten extra journeys triggers on a standard event with a selective
condition and the rest on campaign-specific custom events, as large
programmes do (most journeys belong to one campaign).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.tables import table
from clickstream.generator import GeneratorConfig, write_jsonl
from engine.errors import InvalidEvent
from engine.events import Event, decode_event
from engine.journeys import Engine
from engine.replay import replay, replay_events
from engine.rules.loader import load_rules
from flows.report import say

HEADER = """version: 1
timezone: Europe/Istanbul
quiet_hours: {start: "22:00", end: "09:00"}
consent: {email: opt_out, sms: opt_in, push: opt_in, whatsapp: opt_in, onsite: opt_out}
caps:
  - {channel: any, max: 3, per: 24h}
  - {channel: sms, max: 2, per: 7d}
templates:
  t:
    email: {subject: "{{ profile.first_name }} {{ entry.product_id }}"}
    push: {title: "{{ entry.product_id }}"}
    sms: {text: "hi"}
journeys:
"""

BASE = [
    """  - id: cart
    trigger: {event: add_to_cart, if: "event.price >= 20"}
    key: product_id
    exit: [purchase, {event: remove_from_cart, if: "event.product_id == entry.product_id"}]
    steps:
      - wait: 30m
      - {send: email, template: t, fallback: [sms]}
      - wait: 1h
      - if: "engaged('email', 'clicked')"
        then: [exit]
        else: [{send: push, template: t}]
""",
    """  - id: browse
    trigger:
      event: view_product
      if: "count(view_product, 24h, it.product_id == event.product_id) >= 3"
    key: product_id
    reentry: 7d
    exit: [purchase]
    steps: [{wait: 2h}, {send: push, template: t, fallback: [email]}]
""",
    """  - id: search
    trigger: search
    reentry: 1d
    exit: [purchase]
    steps: [{wait: 1h}, {if: "not exists(purchase, 1h)", then: [{send: email, template: t}]}]
""",
    """  - id: favorite
    trigger: add_favorite
    key: product_id
    exit: [{event: remove_favorite, if: "event.product_id == entry.product_id"}]
    steps: [{wait: 1d}, {if: "favorited(entry.product_id)", then: [{send: push, template: t}]}]
""",
    """  - id: welcome
    trigger: signup
    audience: "count(purchase) == 0"
    exit: [purchase]
    steps: [{send: email, template: t}, {wait: 3d}, {send: email, template: t}]
""",
    """  - id: post_purchase
    trigger: {event: purchase, if: "event.revenue > 0"}
    key: order_id
    reentry: always
    steps: [{wait: 7d}, {send: email, template: t}]
""",
    """  - id: winback
    trigger: purchase
    reentry: always
    exit: [purchase]
    steps: [{wait: 90d}, {send: email, template: t}]
""",
    """  - id: category
    trigger: {event: view_category, if: "count(view_category, 1d) >= 5"}
    reentry: 7d
    steps: [{send: onsite}]
""",
    """  - id: consent_thanks
    trigger: {event: consent, if: "event.granted"}
    steps: [{send: email, template: t}]
""",
    """  - id: login_cart
    trigger: {event: login, if: "cart.count > 0 and cart.total >= 50"}
    reentry: 1d
    steps: [{wait: 10m}, {send: push, template: t, fallback: [email]}]
""",
]

SEGMENTS = """segments:
  loyal: "count(purchase, 365d) >= 3"
  big_spender: "sum(purchase, revenue, 365d) > 500"
  browsing: "count(view_product, 1d) >= 5"
  lapsed: "since(purchase) > 30d"
  cart_full: "cart.count >= 3"
  fav_fan: "count(add_favorite, 30d) >= 2"
  searcher: "count(search, 1d) >= 3"
  never_bought: "exists(signup) and count(purchase) == 0"
  hot_browser: "exists(view_category, 1h) and exists(view_product, 1h)"
  vip_lapsed: "in_segment('loyal') and since(purchase) > 14d"
"""
SEGMENT_AUDIENCE = """  - id: seg_audience
    trigger: login
    audience: "in_segment('big_spender')"
    reentry: 1d
    steps: [{send: onsite}]
"""


# The event that can make each segment's condition true: its trigger without segments.
SEGMENT_EVENTS = {
    "loyal": "purchase",
    "big_spender": "purchase",
    "browsing": "view_product",
    "lapsed": "login",  # time alone makes it true: checked when the shopper is back
    "cart_full": "add_to_cart",
    "fav_fan": "add_favorite",
    "searcher": "search",
    "never_bought": "signup",
    "hot_browser": "view_product",
    "vip_lapsed": "login",
}


def segment_conditions() -> dict[str, str]:
    """The segments of :data:`SEGMENTS`, name -> condition, ``in_segment`` spelt out."""
    found: dict[str, str] = {}
    for line in SEGMENTS.splitlines()[1:]:
        name, cond = line.split(":", 1)
        found[name.strip()] = cond.strip().strip('"')
    return {n: c.replace("in_segment('loyal')", f"({found['loyal']})") for n, c in found.items()}


def event_rules() -> str:
    """The journeys of ``segment_rules(True)`` without segments (the module's ``journeys``)."""
    conds = segment_conditions()
    body = rules_text(10) + SEGMENT_AUDIENCE.replace(
        "in_segment('big_spender')", conds["big_spender"]
    )
    for name, cond in conds.items():
        body += (
            f'  - id: on_{name}\n    trigger: {{event: {SEGMENT_EVENTS[name]}, if: "{cond}"}}\n'
            "    reentry: 7d\n    steps: [{send: onsite}]\n"
        )
    return body


def segment_rules(watched: bool) -> str:
    """The 10-journey rules with 10 segments, each watched by a journey or none."""
    body = rules_text(10).replace("journeys:\n", SEGMENTS + "journeys:\n")
    body += SEGMENT_AUDIENCE
    if watched:
        for name in [line.split(":")[0].strip() for line in SEGMENTS.splitlines()[1:]]:
            body += (
                f"  - id: on_{name}\n    trigger: {{segment: {name}}}\n"
                "    reentry: 7d\n    steps: [{send: onsite}]\n"
            )
    return body


STANDARD = ["view_product", "add_to_cart", "add_favorite", "search", "view_category", "login"]


def _extra(index: int) -> str:
    """One more journey: standard trigger with a selective condition, or a campaign event."""
    if index % 10 == 0:
        kind = STANDARD[(index // 10) % len(STANDARD)]
        cond = (
            f"event.category == 'cat{index}/x'"
            if kind not in ("search", "login")
            else f"count({kind}, 1h) >= {5 + index % 7}"
        )
        return (
            f'  - id: extra{index}\n    trigger: {{event: {kind}, if: "{cond}"}}\n'
            f"    reentry: 7d\n    steps: [{{wait: 1h}}, {{send: email, template: t}}]\n"
        )
    return (
        f"  - id: campaign{index}\n    trigger: campaign_{index}\n    exit: [purchase]\n"
        f"    steps: [{{send: push, template: t, fallback: [email]}}]\n"
    )


def rules_text(journeys: int) -> str:
    """A rules file with ``journeys`` journeys of the mix described above."""
    body = BASE[: min(journeys, len(BASE))] + [_extra(i) for i in range(journeys - len(BASE))]
    return HEADER + "".join(body)


def _decoded(path: Path) -> list[Event]:
    events = []
    for line in path.read_bytes().splitlines():
        try:
            events.append(decode_event(line))
        except InvalidEvent:
            continue
    return events


def _core_run(engine: Engine, events: list[Event]) -> tuple[float, int]:
    """Seconds for the whole log through the engine (as replay runs it), and actions."""
    start = time.perf_counter()
    emitted = len(replay_events(engine, events))
    return time.perf_counter() - start, emitted


REPEATS = 3


def _row(events: int, seconds: list[float], emitted: int) -> dict[str, float]:
    """Best and median of the repeats (the best is the least disturbed run)."""
    best, median = min(seconds), sorted(seconds)[len(seconds) // 2]
    return {
        "events_per_s": events / best,
        "events_per_s_median": events / median,
        "us_per_event": best / events * 1e6,
        "actions": emitted,
    }


def bench_core(*, quick: bool = False, events: int = 0) -> dict[str, Any]:
    """Run the core at 10/100/1,000 journeys and replay end to end; print and save."""
    events = events or (20_000 if quick else 200_000)
    cfg = GeneratorConfig(users=events // 20, events=events, seed=9, span_ms=3 * 86_400_000)
    with tempfile.TemporaryDirectory(prefix="tetik-bench-") as tmp:
        log = Path(tmp) / "events.jsonl"
        say(f"bench core: generating {events:,} events")
        write_jsonl(cfg, log)
        decoded = _decoded(log)
        engines = {n: Engine(load_rules(rules_text(n), f"<bench {n}>")) for n in (10, 100, 1000)}
        runs: dict[int, list[float]] = {n: [] for n in engines}
        emitted: dict[int, int] = {}
        for repeat in range(REPEATS):  # interleaved, so machine noise hits every size alike
            for count, engine in engines.items():
                say(f"bench core: {count} journeys (run {repeat + 1} of {REPEATS})")
                seconds, emitted[count] = _core_run(engine, decoded)
                runs[count].append(seconds)
        rows = {n: _row(len(decoded), runs[n], emitted[n]) for n in engines}
        segments = segments_cost(decoded)
        say("bench core: replay end to end (100 journeys, JSONL -> sorted actions)")
        engine = Engine(load_rules(rules_text(100), "<bench 100>"))
        start = time.perf_counter()
        replay(engine, log.read_bytes().splitlines())
        replay_rate = len(decoded) / (time.perf_counter() - start)
    ratio = rows[1000]["us_per_event"] / rows[10]["us_per_event"]
    print(
        table(
            ["journeys", "events/s (best of 3)", "median", "µs/event", "actions"],
            [
                [
                    str(n),
                    f"{r['events_per_s']:,.0f}",
                    f"{r['events_per_s_median']:,.0f}",
                    f"{r['us_per_event']:.1f}",
                    f"{r['actions']:,.0f}",
                ]
                for n, r in rows.items()
            ],
        )
    )
    print(f"1,000 journeys / 10 journeys per-event time: {ratio:.2f}x")
    print(f"replay end to end (100 journeys): {replay_rate:,.0f} events/s")
    print(segments_summary(segments))
    result = {
        "events": len(decoded),
        "core": {str(n): r for n, r in rows.items()},
        "ratio_1000_vs_10": ratio,
        "replay_events_per_s": replay_rate,
        "segments": segments,
    }
    return result


def segments_cost(decoded: list[Event]) -> dict[str, float]:
    """Per-event time with 10 segments (defined; watched) over the baselines of the
    module docstring, best of 3 interleaved runs each; the actions of each run."""
    engines = {
        "none": Engine(load_rules(rules_text(10), "<bench 10>")),
        "journeys": Engine(load_rules(event_rules(), "<bench 20 journeys>")),
        "defined": Engine(load_rules(segment_rules(False), "<bench segments>")),
        "watched": Engine(load_rules(segment_rules(True), "<bench segments watched>")),
    }
    best: dict[str, float] = dict.fromkeys(engines, float("inf"))
    emitted: dict[str, int] = {}
    for repeat in range(REPEATS):
        for name, engine in engines.items():
            say(f"bench core: 10 journeys, segments {name} (run {repeat + 1} of {REPEATS})")
            seconds, emitted[name] = _core_run(engine, decoded)
            best[name] = min(best[name], seconds)
    per_event = {name: seconds / len(decoded) * 1e6 for name, seconds in best.items()}
    return {
        "events": len(decoded),
        **{f"us_per_event_{name}": us for name, us in per_event.items()},
        **{f"actions_{name}": float(count) for name, count in emitted.items()},
        "ratio_defined": per_event["defined"] / per_event["none"],
        "ratio_watched": per_event["watched"] / per_event["none"],
        "ratio_watched_vs_journeys": per_event["watched"] / per_event["journeys"],
    }


def segments_summary(segments: dict[str, float]) -> str:
    """The segments figures on two lines."""
    return (
        f"10 segments / none, per-event time: {segments['ratio_defined']:.2f}x defined, "
        f"{segments['ratio_watched']:.2f}x watched ({segments['us_per_event_none']:.1f} -> "
        f"{segments['us_per_event_watched']:.1f} us)\n"
        f"watched / the same 20 journeys without segments: "
        f"{segments['ratio_watched_vs_journeys']:.2f}x ({segments['us_per_event_journeys']:.1f} "
        f"us; actions {segments['actions_journeys']:,.0f} vs {segments['actions_watched']:,.0f})"
    )


def bench_segments(*, quick: bool = False, events: int = 0) -> dict[str, Any]:
    """Only the segments figures of :func:`bench_core` (30,000 events; quick 10,000)."""
    events = events or (10_000 if quick else 30_000)
    cfg = GeneratorConfig(users=events // 20, events=events, seed=9, span_ms=3 * 86_400_000)
    with tempfile.TemporaryDirectory(prefix="tetik-bench-") as tmp:
        log = Path(tmp) / "events.jsonl"
        say(f"bench segments: generating {events:,} events")
        write_jsonl(cfg, log)
        decoded = _decoded(log)
    segments = segments_cost(decoded)
    print(segments_summary(segments))
    return {"events": len(decoded), "segments": segments}
