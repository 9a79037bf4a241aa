"""The goals of the benchmark issues, and each measured figure's verdict.

Rules of the interface:

* a goal belongs to one bench (its key in the results) and reads one figure
  from that bench's result; a result without the figure (an older result, a
  part not run) gives no verdict (``-``), never an error;
* a full run's verdict is ``met`` or ``missed``; a quick run's (``--quick``)
  is always ``indicative``: its sizes are reduced and its steps short, on a
  machine that may be busy, so one noisy second can decide it either way
  (:data:`INDICATIVE_WHY` says so wherever verdicts are shown);
* the terminal, ``bench.json`` and ``bench.md`` show the same rows
  (:func:`goal_rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

Goal = tuple[str, str, Callable[[dict[str, Any]], float | None], Callable[[float], bool], str]

GOALS: list[Goal] = [
    (
        "core",
        "core events/s, 100 journeys (one core)",
        lambda r: r["core"]["100"]["events_per_s"],
        lambda v: v >= 100_000,
        ">= 100,000",
    ),
    (
        "core",
        "core per-event time, 1,000 / 10 journeys",
        lambda r: r["ratio_1000_vs_10"],
        lambda v: v <= 2.0,
        "<= 2.0x",
    ),
    (
        "e2e",
        "live throughput, tetik / passthrough",
        lambda r: r["ratios"].get("throughput_tetik_vs_passthrough"),
        lambda v: v >= 0.6,
        ">= 0.6",
    ),
    (
        "e2e",
        "live throughput, tetik / hand-written",
        lambda r: r["ratios"].get("throughput_tetik_vs_handwritten"),
        lambda v: v >= 3.0,
        ">= 3.0x",
    ),
    (
        "e2e",
        "live p99 at half tetik's max, / the passthrough's p99 at the same load",
        lambda r: r["ratios"].get("p99_half_load_tetik_vs_passthrough_same_load"),
        lambda v: v <= 1.5,
        "<= 1.5x",
    ),
    (
        "e2e",
        "timer lateness p99 at half load (ms after due)",
        lambda r: r["systems"]["tetik"]["half_load"]["timer_lateness_ms"]["p99"],
        lambda v: v <= 50,
        "<= 50 ms",
    ),
    (
        "scale",
        "worker memory per pending enrollment (30k shoppers, 30-day waits, bytes)",
        lambda r: r["pending"]["bytes_per_enrollment"],
        lambda v: v <= 256,
        "<= 256",
    ),
    (
        "scale",
        "1M shoppers with pending waits (quick: 100k): engine peak RSS (MiB)",
        lambda r: r["base"]["rss_peak_mib"],
        lambda v: v <= 1024,
        "<= 1,024",
    ),
    (
        "scale",
        "1M shoppers with pending waits (quick: 100k): Redis bytes per shopper",
        lambda r: r["base"]["redis_bytes_per_shopper"],
        lambda v: v <= 2048,
        "<= 2,048",
    ),
    (
        "scale",
        "restart after kill -9, 100k pending (quick: 20k): processing again (s)",
        lambda r: r["restart"]["processing_s"],
        lambda v: v <= 10,
        "<= 10 s",
    ),
    (
        "rfm",
        "RFM boundaries over 1M shoppers (quick: 100k), the engine's implementation (s)",
        lambda r: r["bounds_s_engine"],
        lambda v: v <= 2.0,
        "<= 2 s",
    ),
    (
        "segments",
        "live recheck sweep of 1M shoppers' segments (quick: 100k), one worker (s)",
        lambda r: r["seconds"],
        lambda v: v <= 60,
        "<= 60 s (quick: 6 s)",
    ),
    (
        "segments-replay",
        "tetik segments on 1M purchase events / 100k shoppers (quick: 100k / 10k) (s)",
        lambda r: r["seconds"],
        lambda v: v <= 30,
        "<= 30 s",
    ),
    (
        "history",
        "all-time rollups of an active shopper with 2 years of history (msgpack bytes)",
        lambda r: r["added_bytes"],
        lambda v: v <= 1024,
        "<= 1,024",
    ),
    (
        "memory",
        "Redis bytes per active user (largest size)",
        lambda r: r["sizes"][-1]["used_memory_delta_per_user"],
        lambda v: v <= 2048,
        "<= 2,048",
    ),
]

# The segments issue: "the core's per-event cost with 10 segments defined <= 1.3x without",
# for 10 segments defined and unwatched, and watched, against both baselines
# (bench.core's docstring); `tetik bench core` and `tetik bench segments-core` measure them.
SEGMENT_GOALS: list[tuple[str, str]] = [
    ("ratio_defined", "10 segments defined, not watched / none"),
    ("ratio_watched", "10 segments watched by 10 more journeys / none"),
    ("ratio_watched_vs_journeys", "10 segments watched / the same 20 journeys without segments"),
]


def _segment_ratio(key: str) -> Callable[[dict[str, Any]], float]:
    """The reader of one segments-cost ratio in a core or segments-core result."""
    return lambda result: float(result["segments"][key])


GOALS += [
    (
        bench,
        f"core per-event time, {name}",
        _segment_ratio(key),
        lambda v: v <= 1.3,
        "<= 1.3x",
    )
    for bench in ("core", "segments-core")
    for key, name in SEGMENT_GOALS
]

# Issue 14 (catalog): `tetik bench catalog` runs the three; each also runs alone
# (catalog-fanout, catalog-interest, catalog-product), its result at the top level.
CATALOG_PARTS = {"fanout": "catalog-fanout", "interest": "catalog-interest",
                 "product": "catalog-product"}  # fmt: skip
CATALOG_GOALS: list[tuple[str, str, Callable[[dict[str, Any]], float | None], float, str]] = [
    (
        "fanout",
        "one price drop fanned out live, one worker: s until every derived event is applied, "
        "per 100k shoppers (measured at 100k; quick: at 10k, x10)",
        lambda r: r["seconds"] * 100_000 / r["shoppers"] if r["seconds"] is not None else None,
        10.0,
        "<= 10 s",
    ),
    (
        "fanout",
        "ordinary events' p99 during that fan-out / the same stream without it",
        lambda r: r["p99_ratio"],
        2.0,
        "<= 2x",
    ),
    (
        "interest",
        "interest index: Redis bytes per (shopper, product) pair (a month of shoppers)",
        lambda r: r["bytes_per_pair"],
        120.0,
        "<= 120 B",
    ),
    (
        "product",
        "core per-event time, journeys reading product() and bought_together() / without "
        "(10 journeys)",
        lambda r: r["ratio"],
        1.10,
        "<= 1.10x",
    ),
    (
        "product",
        "the same in instructions counted by callgrind (20,000 events; quick: 3,000): "
        "immune to the machine's other load",
        lambda r: r["instructions"]["ratio"] if r.get("instructions") else None,
        1.10,
        "<= 1.10x",
    ),
]


def _catalog_goal(
    part: str, figure: Callable[[dict[str, Any]], float | None], nested: bool
) -> Callable[[dict[str, Any]], float | None]:
    """The reader of one catalog figure in a ``catalog`` (nested) or part result."""
    return (lambda result: figure(result[part])) if nested else figure


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


GOALS += [
    (bench, name, _catalog_goal(part, figure, bench == "catalog"), _at_most(limit), target)
    for part, name, figure, limit, target in CATALOG_GOALS
    for bench in ("catalog", CATALOG_PARTS[part])
]

GOALS.append(  # issue 16: tetik report (a replay with measures) on 1M events
    (
        "report",
        "tetik report on 1M events (s)",
        lambda r: r["report_s"] if r["events"] >= 1_000_000 else None,
        _at_most(20.0),
        "<= 20 s",
    )
)


MET, MISSED, INDICATIVE, NONE = "met", "missed", "indicative", "-"
INDICATIVE_WHY = (
    "a quick run (--quick): reduced sizes and steps of a few seconds on a machine that may be "
    "busy, so its figures are indicative and no goal is judged met or missed; run without "
    "--quick for verdicts"
)


class GoalRow(msgspec.Struct, frozen=True):
    """One goal against its figure: ``verdict`` is met, missed, indicative or ``-``."""

    bench: str
    goal: str
    target: str
    measured: float | None
    verdict: str


def goal_rows(results: dict[str, Any], *, quick: bool = False) -> list[GoalRow]:
    """Every goal of the benches in ``results``, with its figure and verdict."""
    rows = []
    for bench, name, figure, check, target in GOALS:
        if bench not in results:
            continue
        value = _figure(figure, results[bench])
        rows.append(GoalRow(bench, name, target, value, _verdict(value, check, quick)))
    return rows


def _verdict(value: float | None, check: Callable[[float], bool], quick: bool) -> str:
    if value is None:
        return NONE
    if quick:
        return INDICATIVE
    return MET if check(value) else MISSED


def _figure(
    figure: Callable[[dict[str, Any]], float | None], result: dict[str, Any]
) -> float | None:
    try:
        return figure(result)
    except (KeyError, IndexError, TypeError):
        return None
