"""``tetik report``: journeys measured (SPEC section 11), from a replay or from Redis.

Rules of this interface:

* ``--rules R --events E`` replays the log as ``tetik replay --drain`` does
  (every pending step runs, so a journey's waits do not hide its sends; the
  state bounds of ``TETIK_WINDOWS``), collecting the engine's measures, and
  tallies actions and measures (:func:`engine.measurement.tally`).
  ``--live`` reads the shards' counters instead
  (:func:`flows.stores.measures.read_measures`): the same rows.
* The output is :func:`engine.measurement.rows`: a table per journey (rich),
  its groups first (entered, sent, delivered/opened/clicked, converted, rate
  with its Wilson 95 % interval, uplift over the holdout with Newcombe's 95 %
  interval), then its segments' (``segment NAME``), then its steps; or,
  with ``--json``, one JSON array of the rows.
  ``--journey J`` keeps one journey.
* A bad rules file: every problem, exit 2; no ``TETIK_REDIS_URL`` for
  ``--live``: one line saying so, exit 2.
"""

from __future__ import annotations

import sys

import msgspec
from rich.console import Console
from rich.table import Table

from engine.errors import ConfigError
from engine.journeys import Engine
from engine.measurement import ReportRow, rows, tally
from engine.replay import ReplayStats
from flows import logs
from flows.jobs.backtest import event_lines, load_rules
from flows.jobs.parallel_replay import replay_parallel


def replay_rows(
    rules_path: str, events_path: str, journey: str | None, *, workers: int | None = 1
) -> list[ReportRow] | None:
    """The rows of a replay of ``events_path`` on ``workers`` processes
    (:mod:`flows.jobs.parallel_replay`); None after printing a bad rules file."""
    rules = load_rules(rules_path)
    if rules is None:
        return None
    from flows.settings import windows_from_env

    engine = Engine(rules, windows_from_env())
    engine.measures = []
    stats = ReplayStats()
    actions = replay_parallel(
        engine,
        event_lines(events_path),
        workers=workers,
        drain=True,
        on_error=lambda n, reason: logs.bad_line(events_path, n, reason),
        stats=stats,
    )
    for failure in stats.failed:
        logs.INPUT.error("%s: processing failed, left out: %s", events_path, failure)
    return rows(tally(actions, engine.measures), journey)


def live_rows(journey: str | None) -> list[ReportRow]:
    """The rows of the live engine's counters in Redis (``TETIK_REDIS_URL``)."""
    from flows.retry import connect
    from flows.settings import from_env
    from flows.stores.measures import read_measures

    settings = from_env()
    if not settings.redis_url:
        raise ConfigError("--live reads the engine's Redis: set TETIK_REDIS_URL to it")
    return read_measures(connect(settings.redis_url), settings.keys, journey)


def run_report(
    rules_path: str | None,
    events_path: str | None,
    *,
    live: bool,
    as_json: bool,
    journey: str | None,
    workers: int | None = 1,
) -> int:
    """``tetik report``; exit 2 for a bad rules file."""
    if live:
        found: list[ReportRow] | None = live_rows(journey)
    else:
        assert rules_path is not None
        assert events_path is not None
        found = replay_rows(rules_path, events_path, journey, workers=workers)
    if found is None:
        return 2
    if as_json:
        sys.stdout.buffer.write(msgspec.json.encode(found) + b"\n")
        sys.stdout.buffer.flush()
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=WIDTH)  # a pipe or a file: whole rows, not 80 columns
        print_tables(found, console)
    return 0


def print_tables(found: list[ReportRow], console: Console) -> None:
    """One table per journey: its groups, then its steps."""
    if not found:
        console.print("no journey entered (no measures)")
        return
    for jid in dict.fromkeys(row.journey for row in found):
        console.print(_table(jid, [row for row in found if row.journey == jid]))


WIDTH = 150  # characters per line when the output is not a terminal
_COLUMNS = ("step", "variant", "entered", "sent", "suppressed", "deliv", "open", "click")
_MORE = ("conv", "rate [95% CI]", "uplift pp [95% CI]")


def _table(jid: str, found: list[ReportRow]) -> Table:
    table = Table(title=f"journey {jid}", title_justify="left")
    for name in (*_COLUMNS, *_MORE):
        table.add_column(name, justify="left" if name in ("step", "variant") else "right")
    for row in found:
        table.add_row(
            row.step or (f"segment {row.segment}" if row.segment else "(journey)"),
            row.variant or "-",
            "" if row.step else f"{row.entered:,}",
            _by(row.sent),
            _by(row.suppressed),
            f"{row.delivered:,}",
            f"{row.opened:,}",
            f"{row.clicked:,}",
            "" if row.step else f"{row.converted:,}",
            _rate(row),
            _uplift(row),
        )
    return table


def _by(counts: dict[str, int]) -> str:
    return " ".join(f"{key} {n:,}" for key, n in counts.items()) or "0"


def _rate(row: ReportRow) -> str:
    if row.rate is None or row.rate_low is None or row.rate_high is None:
        return ""
    return f"{row.rate:.1%} [{row.rate_low * 100:.1f}, {row.rate_high * 100:.1f}]"


def _uplift(row: ReportRow) -> str:
    if row.uplift is None or row.uplift_low is None or row.uplift_high is None:
        return ""
    low, high = row.uplift_low * 100, row.uplift_high * 100
    return f"{row.uplift * 100:+.1f} [{low:+.1f}, {high:+.1f}]"
