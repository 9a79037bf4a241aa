"""``tetik segments --rules R --events E [--at T] [--out F]``: memberships after a replay.

Rules of this interface (SPEC section 9):

* The log is replayed to ``T`` (``--at``, epoch ms or RFC 3339; default the
  last event) exactly as ``tetik replay --until T`` does: events after ``T``
  are not applied, timers and recheck instants up to ``T`` run.
* Then every known user (one applied event at least) gets one JSON line,
  sorted by ``user_id``: ``{"user_id", "segments": [names, sorted], "rfm":
  {"r", "f", "m"} or null}``. Memberships are every segment of the rules
  evaluated at ``T`` (:func:`engine.segments.members_at`), whether a journey
  watches it or not.
* stderr gets one ``NAME: COUNT`` line per segment, in file order, and a
  summary line; bad event lines are reported as ``FILE:LINE: reason`` as
  ``tetik replay`` does. A bad rules file: every problem, exit 2; an events
  file that cannot be read: one line, exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.segments import members_at
from engine.state import UserState
from flows.jobs.backtest import _lines, _load


def rfm_by_user(states: Mapping[str, UserState], at: int) -> Mapping[str, dict[str, int] | None]:
    """LEAD: wire engine.rfm here (SPEC section 9, the rfm part).

    Score every user against the whole base at ``at``: user id -> ``{"r", "f",
    "m"}``, or None for a user without purchases. Until then every user's
    ``rfm`` is null (a user missing from the mapping is null).
    """
    return {}


def run_segments(rules_path: str, events_path: str, *, at: int | None, out: str | None) -> int:
    """Replay to ``at`` and write each known user's segments; exit 2 for bad files."""
    rules = _load(rules_path)
    if rules is None:
        return 2
    try:
        Path(events_path).open("rb").close()
    except OSError as exc:
        print(
            f"tetik segments: cannot read the events file {events_path} ({exc.strerror or exc})",
            file=sys.stderr,
        )
        return 2
    states: dict[str, UserState] = {}
    stats = ReplayStats()
    replay(
        Engine(rules),
        _lines(events_path),
        until=at,
        on_error=lambda n, reason: print(f"{events_path}:{n}: {reason}", file=sys.stderr),
        stats=stats,
        states=states,
    )
    moment = at if at is not None else stats.clock
    known = {key: state for key, state in states.items() if state.events}
    scores = rfm_by_user(known, moment)
    counts = dict.fromkeys(rules.segments, 0)
    rows = []
    for key in sorted(known):
        names = members_at(rules, known[key], moment)
        for name in names:
            counts[name] += 1
        rows.append({"user_id": key, "segments": names, "rfm": scores.get(key)})
    if out:
        with Path(out).open("wb") as handle:
            _write(handle, rows)
    else:
        _write(sys.stdout.buffer, rows)
    for name, count in counts.items():
        print(f"{name}: {count:,}", file=sys.stderr)
    print(
        f"\rsegments: {len(known):,} users at {moment} ({stats.events:,} events, "
        f"{stats.invalid:,} invalid lines)",
        file=sys.stderr,
    )
    return 0


def _write(handle: BinaryIO, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        handle.write(orjson.dumps(row) + b"\n")
    handle.flush()
