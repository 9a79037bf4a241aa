"""``tetik replay`` and ``tetik rules validate``: the rules engine on files, no servers.

Both print the rules' warnings (``FILE:LINE:COL: warning: ...``) on stderr; a
warning never changes the exit code. ``tetik replay`` keeps the state bounds
``TETIK_WINDOWS`` sets, as the live engine does (:func:`flows.settings.windows_from_env`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.actions import Action, to_json
from engine.broadcasts import passed
from engine.errors import RulesError
from engine.events import parse_ts
from engine.journeys import Engine
from engine.replay import ReplayStats
from engine.rules.loader import load_rules_file, summary
from engine.rules.model import Rules
from flows import logs
from flows.jobs.parallel_replay import replay_parallel
from flows.jobs.progress import Line, Rate
from flows.report import say


def parse_until(text: str) -> int:
    """``--until``: epoch ms or an RFC 3339 time with offset."""
    if text.isdigit():
        return int(text)
    return parse_ts(text)


def load_rules(path: str) -> Rules | None:
    """The compiled rules, or None after printing every problem to stderr."""
    try:
        rules = load_rules_file(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    for warning in rules.warnings:
        print(warning, file=sys.stderr)
    return rules


def validate(path: str) -> int:
    """Exit 0 with a one-line summary (warnings before it, on stderr), or 1 with every problem."""
    rules = load_rules(path)
    if rules is None:
        return 1
    print(summary(rules, path))
    for warning in passed(rules, time.time_ns() // 1_000_000, path):  # broadcasts already past
        print(warning, file=sys.stderr)
    return 0


def event_lines(path: str) -> Iterator[bytes]:
    """The file's lines, with a progress line on stderr (:mod:`flows.jobs.progress`)."""
    progress, rate = Line(), Rate()
    try:
        with Path(path).open("rb") as handle:
            for count, line in enumerate(handle, start=1):
                yield line
                if count % 50_000 == 0 and progress.due():
                    progress.update(f"replay: {count:,} lines ({rate.read(count):,.0f}/s)")
    finally:
        progress.close()


def run_replay(
    rules_path: str,
    events_path: str,
    *,
    until: int | None,
    drain: bool,
    out: str | None,
    include_suppressed: bool,
    workers: int | None = 1,
) -> int:
    """The backtest; exit 2 for a bad rules file (the errors are printed)."""
    rules = load_rules(rules_path)
    if rules is None:
        return 2
    from flows.settings import windows_from_env  # the settings' owner (not needed by validate)

    windows = windows_from_env()
    stats = ReplayStats()
    actions = replay_parallel(
        Engine(rules, windows),
        event_lines(events_path),
        workers=workers,
        until=until,
        drain=drain,
        on_error=lambda n, reason: logs.bad_line(events_path, n, reason),
        stats=stats,
    )
    for failure in stats.failed:
        logs.INPUT.error("%s: processing failed, left out: %s", events_path, failure)
    kept = [a for a in actions if include_suppressed or a.status == "sent"]
    if out:
        with Path(out).open("wb") as handle:
            _write(handle, kept)
    else:
        _write(sys.stdout.buffer, kept)
    say(
        f"replay: {stats.events:,} events{_derived_note(stats)}, "
        f"{stats.invalid:,} invalid lines, "
        f"{stats.users:,} users -> {stats.actions.get('sent', 0):,} sent, "
        f"{stats.actions.get('suppressed', 0):,} suppressed{_identity_note(stats)}"
    )
    return 0


def _derived_note(stats: ReplayStats) -> str:
    """Events derived from catalog updates (SPEC section 10), when there were any."""
    return f" (+{stats.derived:,} derived from product updates)" if stats.derived else ""


def _identity_note(stats: ReplayStats) -> str:
    """Identity stitching counts (SPEC section 7), when the log had any links."""
    if not (stats.merged or stats.identity_conflicts):
        return ""
    ended = stats.ended.get("merged", 0)
    return (
        f"; {stats.merged:,} anonymous ids merged ({ended:,} enrollments ended as merged), "
        f"{stats.identity_conflicts:,} identity_conflict"
    )


def _write(handle: BinaryIO, actions: list[Action]) -> None:
    for action in actions:
        handle.write(to_json(action) + b"\n")
    handle.flush()
