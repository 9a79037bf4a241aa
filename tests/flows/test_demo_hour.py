"""`tetik demo --at`: the demo's shoppers are at the same local hour whatever the hour it runs.

The demo's core, without servers: the zones its ``--at`` picks for a wall
clock, the rules it writes with them and its stream, stamped from that wall
clock as :mod:`tests.flows.test_demo_stream` stamps it, replayed with
:func:`engine.replay.replay` as the live engine would apply it.
"""

from __future__ import annotations

from collections import Counter

import pytest

from clickstream.zones import ZONES, local_minute, parse_clock, zones_at
from engine.errors import ConfigError
from engine.events import parse_ts
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from flows.jobs.demo import DEFAULT_AT, Hour, Traffic, stream_records

# Every channel the demo's journeys send on; sms is only a fallback for a shopper who
# opted out of email and into sms, which a short run seldom has.
CHANNELS = {"email", "onsite", "push", "whatsapp"}


def _sent(at: str, wall: str) -> Counter[str]:
    """Sends by channel of a short demo started at the wall clock ``wall`` with ``--at``."""
    start = parse_ts(wall)
    hour = Hour.at_now(at, start)
    traffic = Traffic(duration=15, users=300, rate=400, seed=7, zones=hour.zones)
    now = [float(start)]
    opening, rest = stream_records(traffic.config(), lambda: int(now[0]))
    lines = [value for _, value in opening]
    for _, value in rest:
        lines.append(value)
        now[0] += 1000 / traffic.rate
    end = start + 30_000  # the stream and the demo's settling
    engine = Engine(load_rules(hour.rules()))
    actions = replay(engine, lines, received=end, until=end)
    return Counter(a.channel for a in actions if a.status == "sent")


@pytest.mark.parametrize(
    ("at", "wall"),
    [
        (DEFAULT_AT, "2026-12-01T04:51:00Z"),  # when the demo showed 65 actions in Istanbul
        ("15:30", "2026-12-01T16:10:00Z"),
    ],
)
def test_every_channel_sends_at_any_hour_of_the_wall_clock(at: str, wall: str) -> None:
    sent = _sent(at, wall)
    assert set(sent) >= CHANNELS, sent
    assert sum(sent.values()) > 1000


def test_at_a_night_hour_the_quiet_hours_defer_the_sends() -> None:
    """The zones near 23:00 reach back to 21:30, before the quiet hours: a few send."""
    night = sum(_sent("23:00", "2026-12-01T04:51:00Z").values())
    assert 0 < night < 0.1 * sum(_sent(DEFAULT_AT, "2026-12-01T04:51:00Z").values())


def test_the_zones_are_near_the_hour_asked_and_the_rules_use_the_closest() -> None:
    for wall in (parse_ts("2026-07-01T04:51:00Z"), parse_ts("2026-01-01T04:51:00Z")):
        for hour in range(24):  # in summer time and in winter time
            zones = zones_at(hour * 60, wall)
            gaps = [abs(local_minute(zone, wall) - hour * 60) % 1440 for zone, *_ in zones]
            assert min(min(g, 1440 - g) for g in gaps) <= 30
            assert all(min(g, 1440 - g) <= 90 for g in gaps)
            assert sum(share for *_, share in zones) == pytest.approx(1.0)
    demo = Hour.at_now("12:00", wall)
    assert f"\ntimezone: {demo.zones[0][0]}\n" in demo.rules()
    assert {zone for zone, _ in ZONES} >= set(demo.names().split(", "))
    assert parse_clock("9:05") == 545
    with pytest.raises(ConfigError, match="--at '25:00' is not a time of day; write HH:MM"):
        Hour.at_now("25:00", wall)
