"""``tetik bench compile``: the time and memory of compiling a large rules file.

The file is :func:`bench.core.rules_text` with 10,000 journeys (1,000 in quick
mode), the journey mix of the core benchmark. Measured, in this process:

* ``load_s``: :func:`engine.rules.loader.load_rules` (YAML, checks, expressions,
  templates), best of the runs;
* ``engine_s``: building the :class:`engine.journeys.Engine` (step tables,
  trigger indexes) from the loaded rules, best of the runs;
* ``peak_mb``: the peak of memory allocated while loading and building once,
  traced by :mod:`tracemalloc` in a separate run (tracing slows it down, so
  that run is not timed);
* ``retained_mb``: what the compiled engine keeps once the load's temporaries
  are freed.

The live engine compiles a pushed version on a background thread
(:mod:`flows.pipeline.rules_runtime`), so these figures are how long a switch takes to
become ready, not a pause of the processing.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from bench.core import rules_text
from bench.tables import table
from engine.journeys import Engine
from engine.rules.loader import load_rules
from flows.report import say

JOURNEYS = 10_000
QUICK_JOURNEYS = 1_000
RUNS = 3


def compile_once(text: str) -> tuple[float, float, Engine]:
    """(seconds to load, seconds to build the engine, the engine) for one compile."""
    started = time.perf_counter()
    rules = load_rules(text, "<bench compile>")
    loaded = time.perf_counter()
    engine = Engine(rules)
    return loaded - started, time.perf_counter() - loaded, engine


def memory_once(text: str) -> tuple[float, float]:
    """(peak MB while compiling, MB the engine keeps), traced by tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        engine = Engine(load_rules(text, "<bench compile>"))
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del engine
    return peak / 1e6, retained / 1e6


def bench_compile(*, quick: bool = False, journeys: int = 0) -> dict[str, Any]:
    """Compile ``journeys`` journeys (10,000; 1,000 quick) ``RUNS`` times; print and return."""
    count = journeys or (QUICK_JOURNEYS if quick else JOURNEYS)
    text = rules_text(count)
    loads, builds = [], []
    for run in range(RUNS):
        say(f"bench compile: {count:,} journeys (run {run + 1} of {RUNS})")
        load_s, engine_s, _ = compile_once(text)
        loads.append(load_s)
        builds.append(engine_s)
    peak_mb, retained_mb = memory_once(text)
    result = {
        "journeys": count,
        "file_kb": round(len(text.encode()) / 1024),
        "load_s": round(min(loads), 3),
        "engine_s": round(min(builds), 3),
        "total_s": round(min(loads) + min(builds), 3),
        "peak_mb": round(peak_mb, 1),
        "retained_mb": round(retained_mb, 1),
    }
    header = ["journeys", "file KB", "load s", "engine s", "peak MB", "kept MB"]
    keys = ("journeys", "file_kb", "load_s", "engine_s", "peak_mb", "retained_mb")
    print(table(header, [[f"{result[k]:,}" for k in keys]]))
    return result
