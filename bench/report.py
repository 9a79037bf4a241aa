"""Result files of ``tetik bench``: JSON, a Markdown report, a latency plot.

One run writes three files to its output directory: ``bench.json`` (the
machine, versions, parameters, the goals with their verdicts (``goals``, see
:mod:`bench.goals`; ``verdicts`` says what they mean: a quick run's are
indicative) and every figure, with the Kafka broker each benchmark that starts
one measured on, under its ``broker``), ``bench.md`` (tables, and the goals of
the benchmark issue with each figure against its goal; it names the broker)
and ``latency.png`` (p50, p99 and p99.9 against offered load, one colour per
system and one line style and marker per percentile, the p99 goal marked where
it applies, at tetik's half load; the broker in its title; needs matplotlib,
the ``bench`` extra, and is skipped with a note without it).
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec
import orjson

from bench.tables import broker_label

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


def document(results: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The result document of a run: machine, parameters, every figure, the goals' verdicts
    (``goals``; a quick run's are ``indicative``, and ``verdicts`` says why)."""
    from bench.goals import INDICATIVE_WHY, goal_rows

    quick = bool(params.get("quick"))
    rows = goal_rows(results, quick=quick)
    return {
        "at": time.time(),
        "machine": machine(),
        "params": params,
        "verdicts": f"indicative: {INDICATIVE_WHY}" if quick else "met or missed, as measured",
        "goals": [msgspec.structs.asdict(row) for row in rows],
        "results": results,
    }


def write_results(out: Path, results: dict[str, Any], params: dict[str, Any]) -> list[Path]:
    """Write bench.json, bench.md and (with e2e figures and matplotlib) latency.png."""
    return write_document(out, document(results, params))


def write_document(out: Path, doc: dict[str, Any]) -> list[Path]:
    """Write ``doc`` (:func:`document`) as bench.json, bench.md and latency.png."""
    from bench.markdown import render

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "bench.json", out / "bench.md"]
    paths[0].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    paths[1].write_text(render(doc))
    results = doc["results"]
    if "e2e" in results:
        png = plot(results["e2e"], out / "latency.png", quick=bool(doc["params"].get("quick")))
        if png is not None:
            paths.append(png)
    return paths


COLOURS = {"tetik": "tab:red", "passthrough": "tab:grey", "handwritten": "tab:blue"}
# (line style, marker) per percentile: each percentile its own look, whatever the colour
LOOKS: dict[str, tuple[Literal[":", "-", "--"], str]] = {
    "p50": (":", "."), "p99": ("-", "o"), "p99.9": ("--", "^"),
}  # fmt: skip
GOAL_RATIO = 1.5  # tetik's p99 at half load <= 1.5x the passthrough's p99 at that load


def plot(e2e: dict[str, Any], path: Path, *, quick: bool = False) -> Path | None:
    """Write :func:`draw`'s figure to ``path`` (None, with a note, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tetik: no plot: matplotlib is missing (pip install 'tetik[bench]')")
        return None
    fig = draw(e2e, quick=quick)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw(e2e: dict[str, Any], *, quick: bool = False) -> Any:
    """Latency percentiles against offered load: one colour per system, one line style
    and marker per percentile (each line labelled ``SYSTEM PCT``), and the p99 goal
    where it applies (tetik's half load); a matplotlib Figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9.5, 5.5), dpi=110)
    for name, result in e2e["systems"].items():
        for pct, (style, marker) in LOOKS.items():
            xs, ys = _series(result, pct)
            ax.plot(xs, ys, linestyle=style, marker=marker, color=COLOURS.get(name),
                    markersize=4, label=f"{name} {pct}")  # fmt: skip
    goal = _draw_goal(ax, e2e)
    ax.set(xscale="log", yscale="log", xlabel="offered load (events/s)")
    ax.set(ylabel="event -> output on Kafka (ms)", title=_title(e2e, quick))
    ax.grid(True, which="both", linewidth=0.3)
    systems = [Line2D([], [], color=COLOURS.get(n), label=n) for n in e2e["systems"]]
    looks = [Line2D([], [], color="black", linestyle=s, marker=m, label=p)
             for p, (s, m) in LOOKS.items()]  # fmt: skip
    first = ax.legend(handles=systems, title="system", bbox_to_anchor=(1.01, 1),
                      fontsize=7, loc="upper left", alignment="left")  # fmt: skip
    ax.add_artist(first)
    ax.legend(handles=looks + goal, title="percentile, goal", bbox_to_anchor=(1.01, 0.72),
              fontsize=7, loc="upper left", alignment="left")  # fmt: skip
    fig.tight_layout()
    return fig


def _series(result: dict[str, Any], pct: str) -> tuple[list[float], list[float]]:
    """The (offered load, latency) points of one percentile, steps and half load in order."""
    steps = sorted([*result["steps"], result["half_load"]], key=lambda s: s["offered_per_s"])
    points = [(s["offered_per_s"], s["latency_ms"][pct]) for s in steps]
    return [x for x, y in points if y is not None], [y for x, y in points if y is not None]


def _draw_goal(ax: Any, e2e: dict[str, Any]) -> list[Any]:
    """The p99 goal at tetik's half load (1.5x the passthrough's p99 at the nearest load
    it sustained) and tetik's p99 there; the legend's entries for them ([] without one)."""
    tetik = e2e["systems"].get("tetik")
    ratio = e2e.get("ratios", {}).get("p99_half_load_tetik_vs_passthrough_same_load")
    if tetik is None or not ratio:
        return []
    x, p99 = tetik["half_load"]["offered_per_s"], tetik["half_load"]["latency_ms"]["p99"]
    goal = GOAL_RATIO * p99 / ratio
    label = f"goal at half load:\ntetik p99 <= {GOAL_RATIO}x passthrough's\n= {goal:,.0f} ms"
    mark = ax.plot([x], [goal], linestyle="", marker="_", markersize=22, markeredgewidth=2.5,
                   color="black", label=label)  # fmt: skip
    measured = f"tetik p99 at half load\n= {p99:,.0f} ms"
    ring = ax.plot([x], [p99], linestyle="", marker="o", markersize=11, fillstyle="none",
                   color=COLOURS["tetik"], label=measured)  # fmt: skip
    return [*mark, *ring]


def _title(e2e: dict[str, Any], quick: bool) -> str:
    title = "End-to-end latency by offered load"
    if "broker" in e2e:
        title += f" ({broker_label(e2e['broker'])})"
    return title + ("\nquick run: indicative figures" if quick else "")
