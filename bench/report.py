"""Result files of ``tetik bench``: JSON, a Markdown report, a latency plot.

One run writes three files to its output directory: ``bench.json`` (the
machine, versions, parameters and every figure, with the Kafka broker each
benchmark that starts one measured on, under its ``broker``), ``bench.md``
(tables, and the goals of the benchmark issue with each figure against its
goal; it names the broker) and ``latency.png`` (latency percentiles against
offered load, the broker in its title; needs matplotlib, the ``bench`` extra,
and is skipped with a note without it).
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path("bench/results")
PACKAGES = ("tetik", "bytewax", "confluent-kafka", "redis", "hiredis", "msgspec", "orjson")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "-"


def default_out() -> Path:
    return RESULTS / time.strftime("%Y%m%d-%H%M%S")


def broker_label(broker: dict[str, str]) -> str:
    """``apache-kafka 4.4.0``, ``tansu 0.6.0``, ``external``: a broker's name and version."""
    return f"{broker['name']} {broker.get('version', '')}".strip()


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, Any], params: dict[str, Any]) -> list[Path]:
    """Write bench.json, bench.md and (with e2e figures and matplotlib) latency.png."""
    from bench.markdown import render

    out.mkdir(parents=True, exist_ok=True)
    doc = {"at": time.time(), "machine": machine(), "params": params, "results": results}
    paths = [out / "bench.json", out / "bench.md"]
    paths[0].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    paths[1].write_text(render(doc))
    if "e2e" in results:
        png = plot(results["e2e"], out / "latency.png")
        if png is not None:
            paths.append(png)
    return paths


def plot(e2e: dict[str, Any], path: Path) -> Path | None:
    """Latency percentiles against offered load, one colour per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tetik: no plot: matplotlib is missing (pip install 'tetik[bench]')")
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = {"tetik": "tab:red", "passthrough": "tab:grey", "handwritten": "tab:blue"}
    styles = {"p50": ":", "p99": "-", "p99.9": "--"}
    for name, result in e2e["systems"].items():
        steps = sorted(result["steps"] + [result["half_load"]], key=lambda s: s["offered_per_s"])
        for pct, style in styles.items():
            xs = [s["offered_per_s"] for s in steps if s["latency_ms"][pct] is not None]
            ys = [s["latency_ms"][pct] for s in steps if s["latency_ms"][pct] is not None]
            ax.plot(xs, ys, style, color=colours.get(name), marker=".", label=f"{name} {pct}")
    ax.axhline(25, color="black", linewidth=0.6)
    ax.text(ax.get_xlim()[0], 26, " goal: tetik p99 <= 25 ms at half load", fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="offered load (events/s)")
    title = "End-to-end latency by offered load"
    if "broker" in e2e:
        title += f" ({broker_label(e2e['broker'])})"
    ax.set(ylabel="event -> output on Kafka (ms)", title=title)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
