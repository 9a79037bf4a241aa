"""``tetik bench``: run the benchmarks, then write JSON, Markdown and a plot."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import default_out, write_results
from flows.report import say

WHAT = ("core", "e2e", "memory", "ingest", "compile", "all")
ALL = ("core", "e2e", "memory")  # ingest and compile run on request


def _benches() -> dict[str, Callable[..., dict[str, Any]]]:
    from bench.core import bench_core
    from bench.e2e import bench_e2e
    from bench.ingest import bench_ingest
    from bench.memory import bench_memory
    from bench.rules_compile import bench_compile

    return {
        "core": bench_core,
        "e2e": bench_e2e,
        "memory": bench_memory,
        "ingest": bench_ingest,
        "compile": bench_compile,
    }


def run_bench(what: str, *, quick: bool = False, out: str | None = None) -> int:
    """Run ``what`` (one benchmark or ``all``); write the result files to ``out``."""
    names = ALL if what == "all" else (what,)
    benches = _benches()
    results: dict[str, Any] = {}
    started = time.monotonic()
    for name in names:
        say(f"bench {name}{' (quick)' if quick else ''}")
        results[name] = benches[name](quick=quick)
    seconds = time.monotonic() - started
    params = {"what": what, "quick": quick, "seconds": round(seconds, 1)}
    for path in write_results(Path(out) if out else default_out(), results, params):
        say(f"wrote {path}")
    say(f"bench finished in {seconds:.0f} s")
    return 0
