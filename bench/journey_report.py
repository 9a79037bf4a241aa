"""``tetik bench report``: the time of ``tetik report`` (a replay with measures) on 1M events.

The log is the generator's (1,000,000 events of 100,000 shoppers, seed 42;
100,000 events quick), written to a temporary file first (not timed). The rules
are :data:`RULES`: three experiments (a send-time test with a split after a
wait until a local time, a channel-order test with an exit before its split, a
holdout-only journey), each with a holdout and a goal. Timed, in this process:
:func:`flows.jobs.journey_report.replay_rows`, which reads and decodes the
file, replays it with the engine's measures and builds the report's rows, as
``tetik report`` does before it prints (printing is not timed): once with
``tetik report``'s default ``--workers`` (the machine's cores,
:mod:`flows.jobs.parallel_replay`), once in one process, the baseline of the
same run; both must give the same rows. The goal (issue 16): at most 20 s on
1M events.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.tables import table
from clickstream.generator import GeneratorConfig, starting, write_jsonl
from engine.measurement import ReportRow
from flows.clock import wall_ms
from flows.jobs.journey_report import replay_rows
from flows.jobs.parallel_replay import default_workers
from flows.report import say

EVENTS = 1_000_000
QUICK_EVENTS = 100_000

RULES = """\
version: 1
timezone: Europe/Istanbul
quiet_hours: {start: "22:00", end: "09:00"}
consent: {email: opt_out, sms: opt_in, push: opt_out, onsite: opt_out}
caps:
  - {channel: any, max: 3, per: 24h}
templates:
  welcome:
    email: {subject: "Hos geldin"}
  cart:
    email: {subject: "Sepetin"}
    push: {title: "Sepetin"}
  browse:
    onsite: {text: "Bunu unutma"}
journeys:
  - id: send_time_test
    trigger: signup
    holdout: 10%
    goal: {event: purchase, within: 3d}
    steps:
      - split: {morning: 50, evening: 50}
        morning:
          - wait: {until: "10:00"}
          - send: email
            template: welcome
        evening:
          - wait: {until: "19:00"}
          - send: email
            template: welcome
  - id: cart_channel_test
    trigger: add_to_cart
    reentry: 1d
    exit: [purchase]
    holdout: 10%
    goal: {event: purchase, within: 3d}
    steps:
      - wait: 30m
      - split: {email_first: 50, push_first: 50}
        email_first:
          - send: email
            template: cart
          - wait: 1h
          - send: push
            template: cart
        push_first:
          - send: push
            template: cart
          - wait: 1h
          - send: email
            template: cart
  - id: browse
    trigger: view_product
    reentry: 1d
    holdout: 20%
    goal: {event: add_to_cart, within: 1d}
    steps:
      - wait: 1h
      - send: onsite
        template: browse
"""


def bench_report(*, quick: bool = False, events: int = 0) -> dict[str, Any]:
    """Time ``tetik report``'s replay and rows on ``events`` generated events."""
    count = events or (QUICK_EVENTS if quick else EVENTS)
    with tempfile.TemporaryDirectory(prefix="tetik-bench-report-") as where:
        rules, log = Path(where) / "rules.yaml", Path(where) / "events.jsonl"
        rules.write_text(RULES)
        cfg = starting(GeneratorConfig(users=count // 10, events=count, seed=42), None, wall_ms())
        say(f"bench report: writing {count:,} events")
        write_jsonl(cfg, log)
        workers = default_workers()
        seconds, found = _timed(rules, log, workers)
        alone, found_alone = _timed(rules, log, 1)
    if found != found_alone:
        raise AssertionError(f"bench report: {workers} workers and one process differ")
    entered = sum(r.entered for r in found if not r.step and r.variant != "*")
    result = {
        "events": count,
        "workers": workers,
        "report_s": round(seconds, 2),
        "events_per_s": round(count / seconds),
        "one_process_s": round(alone, 2),
        "speedup": round(alone / seconds, 2),
        "rows": len(found),
        "entered": entered,
    }
    header = [
        "events",
        "workers",
        "report s",
        "events/s",
        "1 process s",
        "speed-up",
        "rows",
        "entrants",
    ]
    keys = (
        "events",
        "workers",
        "report_s",
        "events_per_s",
        "one_process_s",
        "speedup",
        "rows",
        "entered",
    )
    print(table(header, [[f"{result[k]:,}" for k in keys]]))
    return result


def _timed(rules: Path, log: Path, workers: int) -> tuple[float, list[ReportRow]]:
    """Seconds of ``tetik report``'s replay and rows on ``workers`` processes, and the rows."""
    say(f"bench report: tetik report on {workers} process(es)")
    started = time.perf_counter()
    found = replay_rows(str(rules), str(log), None, workers=workers)
    seconds = time.perf_counter() - started
    assert found is not None  # RULES load
    return seconds, found
