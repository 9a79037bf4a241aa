"""``tetik segments --rules R --events E [--at T] [--out F]``: memberships after a replay.

Rules of this interface (SPEC section 9):

* The log is replayed to ``T`` (``--at``, epoch ms or RFC 3339; default the
  last event) as ``tetik replay --until T`` does (events after ``T`` are not
  applied), without the journeys: no segment reads what journeys keep
  (enrollments, sends), so memberships do not depend on them.
* Then every known user (one applied event at least) gets one JSON line,
  sorted by ``user_id``: ``{"user_id", "segments": [names, sorted], "rfm":
  {"r", "f", "m"} or null}``. Memberships are every segment of the rules
  evaluated at ``T`` (:func:`engine.segments.members_at`), whether a journey
  watches it or not; ``rfm`` scores the user against the base's boundaries
  computed at ``T`` over every known user (SPEC: "at the time asked").
* stderr gets one ``NAME: COUNT`` line per segment, in file order, and a
  summary line; bad event lines are reported as ``FILE:LINE: reason`` as
  ``tetik replay`` does. A bad rules file: every problem, exit 2; an events
  file that cannot be read: one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from engine.journeys import Engine
from engine.replay import ReplayStats, replay
from engine.rfm import RfmBook, RfmScore, rfm_inputs, score
from engine.rfm_base import base_bounds, score_base
from engine.segments import members_at
from engine.state import UserState
from flows import logs
from flows.jobs.backtest import event_lines, load_rules
from flows.settings import windows_from_env

WHOLE_BASE_FROM = 200_000  # buyers from which the compiled whole-base scorer wins


def base_scores(
    states: Mapping[str, UserState], at: int
) -> tuple[RfmBook, dict[str, RfmScore | None]]:
    """The base's RFM boundaries computed at ``at`` (SPEC 9: "at the time asked") and
    every user's scores against them (None without purchases).

    From :data:`WHOLE_BASE_FROM` users on, the whole base is scored at once by the
    compiled kernel (:func:`engine.rfm_base.score_base`, numba: 9x numpy on 1M, but
    ~0.3 s to import and load); below it one user at a time costs less.
    """
    keys = list(states)
    found = [rfm_inputs(states[key]) for key in keys]
    buyers = [(key, i) for key, i in zip(keys, found, strict=True) if i is not None]
    last = np.fromiter((i.last for _, i in buyers), dtype=np.int64, count=len(buyers))
    count = np.fromiter((i.count for _, i in buyers), dtype=np.int64, count=len(buyers))
    revenue = np.fromiter((i.revenue for _, i in buyers), dtype=np.float64, count=len(buyers))
    bounds = base_bounds(at, last, count, revenue)
    book = RfmBook()
    book.add(bounds)
    scores: dict[str, RfmScore | None] = dict.fromkeys(keys)
    if len(buyers) >= WHOLE_BASE_FROM and bounds.buyers:
        r, f, m = score_base(bounds, last, count, revenue)
        for (key, _), rs, fs, ms in zip(buyers, r.tolist(), f.tolist(), m.tolist(), strict=True):
            scores[key] = RfmScore(rs, fs, ms)
    else:
        for key, inputs in buyers:
            scores[key] = score(bounds, inputs)
    return book, scores


def rfm_view(found: RfmScore | None) -> dict[str, int] | None:
    """``{"r", "f", "m"}`` for one user, or None without purchases."""
    return None if found is None else {"r": found.r, "f": found.f, "m": found.m}


def run_segments(rules_path: str, events_path: str, *, at: int | None, out: str | None) -> int:
    """Replay to ``at`` and write each known user's segments; exit 2 for bad files."""
    rules = load_rules(rules_path)
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
    # Memberships depend on the shoppers' events only (no segment reads what journeys
    # keep: enrollments, sends), so the replay runs without the journeys.
    engine = Engine(dataclasses.replace(rules, journeys=()), windows_from_env())
    replay(
        engine,
        event_lines(events_path),
        until=at,
        on_error=lambda n, reason: logs.bad_line(events_path, n, reason),
        stats=stats,
        states=states,
    )
    moment = at if at is not None else stats.clock
    known = {key: state for key, state in states.items() if state.events}
    book, scores = base_scores(known, moment)
    counts = dict.fromkeys(rules.segments, 0)
    rows = []
    for key in sorted(known):
        found = scores[key]
        names = members_at(rules, known[key], moment, book, engine.windows, found)
        for name in names:
            counts[name] += 1
        rows.append({"user_id": key, "segments": names, "rfm": rfm_view(found)})
    if out:
        with Path(out).open("wb") as handle:
            _write(handle, rows)
    else:
        _write(sys.stdout.buffer, rows)
    for name, count in counts.items():
        print(f"{name}: {count:,}", file=sys.stderr)
    print(
        f"segments: {len(known):,} users at {moment} ({stats.events:,} events, "
        f"{stats.invalid:,} invalid lines)",
        file=sys.stderr,
    )
    return 0


def _write(handle: BinaryIO, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        handle.write(orjson.dumps(row) + b"\n")
    handle.flush()
