"""``tetik bench``: dispatch to the benchmarks in this package."""

from __future__ import annotations


def run_bench(what: str, *, quick: bool = False) -> int:
    """Run ``core``, ``ingest``, ``memory`` or ``all``; each prints figures and writes JSON."""
    from bench.core import bench_core
    from bench.ingest import bench_ingest
    from bench.memory import bench_memory

    if what in ("core", "all"):
        bench_core(quick=quick)
    if what in ("ingest", "all"):
        bench_ingest(quick=quick)
    if what in ("memory", "all"):
        bench_memory(quick=quick)
    return 0
