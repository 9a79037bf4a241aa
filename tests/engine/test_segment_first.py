"""A user's first event evaluates only the segments it can put them in (engine.segment_first)."""

from __future__ import annotations

import orjson
import pytest

from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.segment_first import false_when_empty
from engine.state import UserState

START = parse_ts("2024-05-06T08:00:00Z")


def _rules(segments: dict[str, str]) -> str:
    lines = ["version: 1", "consent: {onsite: opt_out}", "segments:"]
    lines += [f'  {name}: "{cond}"' for name, cond in segments.items()]
    lines.append("journeys:")
    for name in segments:
        lines += [
            f"  - id: on_{name}",
            f"    trigger: {{segment: {name}}}",
            "    steps: [{send: onsite}]",
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("since(purchase) > 30d", True),
        ("count(view_product, 1d) >= 5", True),
        ("exists(signup) and count(purchase) == 0", True),
        ("count(purchase) == 0", False),  # holds for a user with no events
        ("not exists(add_to_cart, 2h)", False),
        ("anonymous and count(search, 1h) >= 0", False),  # a guest is in it at once
        ("not anonymous", False),  # a known customer is in it at once
        (f"now >= {START}", False),  # moves with the clock alone
        ("not (since(purchase) < now)", False),  # reads the clock: continuous
    ],
)
def test_false_when_empty(cond: str, expected: bool) -> None:
    rules = load_rules(_rules({"s": cond}), "r.yaml")
    assert false_when_empty(rules.segments["s"]) is expected


def _event(kind: str, ts: int, **fields: str) -> Event:
    body = {"event_id": f"{kind}{ts}", "type": kind, "ts": ts, **fields}
    return decode_event(orjson.dumps(body))


@pytest.mark.parametrize(
    ("ids", "entered"),
    [
        ({"user_id": "u0"}, ["on_known", "on_no_purchase"]),
        ({"anon_id": "a0"}, ["on_guest", "on_no_purchase"]),
    ],
)
def test_a_first_event_enters_the_segments_an_empty_user_is_in(
    ids: dict[str, str], entered: list[str]
) -> None:
    """Segments that do not read the event's type still enter the user at once when
    they hold without any event; those that cannot hold are not evaluated."""
    text = _rules(
        {
            "known": "not anonymous",
            "guest": "anonymous",
            "no_purchase": "count(purchase) == 0",
            "lapsed": "since(purchase) > 30d",
            "browsing": "count(view_product, 1d) >= 1",
        }
    )
    engine = Engine(load_rules(text, "r.yaml"))
    state = UserState(key=next(iter(ids.values())))
    actions = engine.on_event(state, _event("search", START, query="q", **ids), START)
    assert sorted(a.journey for a in actions) == entered
    assert sorted(state.segments) == sorted(j.removeprefix("on_") for j in entered)
    view = _event("view_product", START + 60_000, product_id="p", **ids)
    later = engine.on_event(state, view, view.ts)
    assert [a.journey for a in later] == ["on_browsing"]
