"""``tetik bench``: run the benchmarks, write JSON, Markdown and a plot, then print
the tables (goals, latency, every bench's figures) in the terminal (:mod:`bench.terminal`).

The benchmarks that start a Kafka broker (``e2e``, ``memory``, ``scale``, ``catalog``,
``catalog-fanout``) measure on the one
that :func:`bench.e2e.choose_broker` picks: ``--broker tansu|apache`` (``broker``
here), else ``TETIK_EMBEDDED_KAFKA``, else Apache Kafka where Java 17 and Maven are
present, else tansu. Each of their results names it (``broker``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.report import default_out, document, write_document
from bench.tables import broker_label
from bench.terminal import show
from flows.report import say

WHAT = (
    "core", "e2e", "memory", "scale", "ingest", "compile", "rfm", "history", "segments",
    "segments-core", "segments-replay", "catalog", "catalog-fanout", "catalog-interest",
    "catalog-product", "collect", "report", "all",
)  # fmt: skip
ALL = ("core", "e2e", "memory", "scale")  # the others run on request


def _benches() -> dict[str, Callable[..., dict[str, Any]]]:
    from bench.catalog import bench_catalog
    from bench.catalog_fanout import bench_catalog_fanout
    from bench.catalog_interest import bench_catalog_interest
    from bench.catalog_product import bench_catalog_product
    from bench.collect import bench_collect
    from bench.core import bench_core
    from bench.core import bench_segments as bench_segments_core
    from bench.e2e import bench_e2e
    from bench.history import bench_history
    from bench.ingest import bench_ingest
    from bench.journey_report import bench_report
    from bench.memory import bench_memory
    from bench.rfm import bench_rfm
    from bench.rules_compile import bench_compile
    from bench.scale import bench_scale
    from bench.segments_live import bench_segments
    from bench.segments_replay import bench_segments_replay

    return {
        "core": bench_core,
        "e2e": bench_e2e,
        "memory": bench_memory,
        "scale": bench_scale,
        "ingest": bench_ingest,
        "compile": bench_compile,
        "rfm": bench_rfm,
        "history": bench_history,
        "segments": bench_segments,
        "segments-replay": bench_segments_replay,
        "segments-core": bench_segments_core,
        "catalog": bench_catalog,
        "catalog-fanout": bench_catalog_fanout,
        "catalog-interest": bench_catalog_interest,
        "catalog-product": bench_catalog_product,
        "collect": bench_collect,
        "report": bench_report,
    }


def run_bench(
    what: str, *, quick: bool = False, out: str | None = None, broker: str | None = None
) -> int:
    """Run ``what`` (one benchmark or ``all``); write the result files to ``out``.

    ``broker`` ("tansu" or "apache", default: chosen as the module says) is the
    embedded Kafka broker of the benchmarks that start one.
    """
    names = ALL if what == "all" else (what,)
    benches = _benches()
    results: dict[str, Any] = {}
    started = time.monotonic()
    for name in names:
        say(f"bench {name}{' (quick)' if quick else ''}")
        if name in ("e2e", "catalog", "catalog-fanout"):
            results[name] = benches[name](quick=quick, broker=broker)
        elif name in ("memory", "scale"):
            results[name] = _with_broker(benches[name], quick, broker)
        else:
            results[name] = benches[name](quick=quick)
    seconds = time.monotonic() - started
    params = {"what": what, "quick": quick, "seconds": round(seconds, 1), "broker": broker}
    doc = document(results, params)
    paths = write_document(Path(out) if out else default_out(), doc)
    show(doc)
    for path in paths:
        say(f"wrote {path}")
    say(f"bench finished in {seconds:.0f} s")
    return 0


def _with_broker(
    bench: Callable[..., dict[str, Any]], quick: bool, broker: str | None
) -> dict[str, Any]:
    """Run ``bench`` (which starts its servers with flows' ``servers()``) on the chosen
    broker, and record that broker in its result."""
    from bench.e2e import SERVER_NAMES, broker_version, choose_broker
    from flows.servers.apache_kafka import EMBEDDED_KAFKA_ENV
    from flows.servers.embedded import KAFKA_BOOTSTRAP_ENV

    kind, why = choose_broker(broker)
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV, "")
    if external:  # servers() uses it and starts none
        used = {
            "name": "external", "version": "", "bootstrap": external, "why": KAFKA_BOOTSTRAP_ENV,
        }  # fmt: skip
    else:
        used = {"name": SERVER_NAMES[kind], "version": broker_version(kind), "why": why}
    say(f"bench: measuring on {broker_label(used)} ({used['why']})")
    with _environ(EMBEDDED_KAFKA_ENV, kind):
        result = bench(quick=quick)
    return {**result, "broker": used}


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block; the previous state after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
