"""Replay leaves out what the live engine dead-letters: bad lines, far-future and poison events."""

from __future__ import annotations

import orjson

from engine.events import MAX_FUTURE_MS
from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rules.loader import load_rules
from tests.engine.faulty import FaultyEngine

RULES = """\
version: 1
consent: {push: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - send: push
  - id: again
    trigger: login
    steps:
      - send: push
"""
NOW = 1_714_557_600_000


def line(event_id: str, kind: str, user: str, ts: int = NOW) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": kind, "ts": ts, "user_id": user})


def test_a_poison_event_is_left_out_as_if_it_never_came() -> None:
    engine = FaultyEngine(load_rules(RULES, "rules.yaml"))
    stats = ReplayStats()
    lines = [
        line("e1", "signup", "u1"),
        line("poison-1", "login", "u1", NOW + 1),  # would enter `again` before raising
        line("e2", "signup", "u2", NOW + 2),
    ]
    actions = replay(engine, lines, drain=True, stats=stats)
    assert [(a.user_id, a.journey) for a in actions] == [("u1", "welcome"), ("u2", "welcome")]
    assert stats.failed == ["poison-1: OverflowError: injected"]
    assert stats.events == 2


def test_measures_restart_with_the_run_after_a_poison_event() -> None:
    engine = FaultyEngine(load_rules(RULES, "rules.yaml"))
    engine.measures = []
    lines = [line("e1", "signup", "u1"), line("poison-1", "login", "u1", NOW + 1)]
    replay(engine, lines, drain=True)
    # The first run entered `welcome` and `again` before the poison raised; only the
    # run without it counts.
    assert [(m.kind, m.journey) for m in engine.measures] == [("entered", "welcome")]


def test_an_event_far_in_the_future_is_a_bad_line() -> None:
    errors: list[tuple[int, str]] = []
    lines = [line("e1", "signup", "u1"), line("e2", "signup", "u2", NOW + MAX_FUTURE_MS + 1)]
    engine = Engine(load_rules(RULES, "rules.yaml"))
    actions = replay(
        engine, lines, drain=True, received=NOW, on_error=lambda n, r: errors.append((n, r))
    )
    assert [a.user_id for a in actions] == ["u1"]
    assert errors[0][0] == 2
    assert "in the future are refused" in errors[0][1]
