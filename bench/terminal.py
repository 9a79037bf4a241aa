"""The end of a ``tetik bench`` run in the terminal: its figures as rich tables.

Rules of the interface:

* it shows what ``bench.md`` shows, from the same result document
  (:func:`bench.report.document`), and computes nothing of its own;
* the goals come first (goal, target, measured, verdict); a quick run's
  verdicts are ``indicative`` and a line says why (:data:`bench.goals.INDICATIVE_WHY`);
* ``e2e`` is one latency table, a row per offered load per system (sustained
  rate, p50, p99, p99.9, samples, saturated; tetik's half load marked), then
  its ratios; the wide per-step tables (CPU, backlog, timers) stay in bench.md;
* every other bench is its section of bench.md (a table of its figures for
  one without a section of its own): its tables as rich tables, numbers
  right-aligned, the rest through rich's Markdown renderer;
* everything goes to ``file`` (stdout: what a command prints as its result;
  progress lines stay on stderr); off a terminal it is plain text, 120 wide.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from bench.goals import INDICATIVE, INDICATIVE_WHY, MET, MISSED, goal_rows
from bench.markdown import broker_line, figure_text, sections

STYLES = {MET: "green", MISSED: "bold red", INDICATIVE: "yellow"}
PERCENTILES = ("p50", "p99", "p99.9")


def show(doc: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the run's tables (see the module's rules) to ``file`` (stdout)."""
    out = file or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 120, highlight=False)
    results, quick = doc["results"], bool(doc["params"].get("quick"))
    console.print(goals(results, quick))
    if quick:
        console.print(f"Verdicts are indicative: {INDICATIVE_WHY}.", style=STYLES[INDICATIVE])
    for bench, heading, body in sections(results):
        console.print()
        console.rule(heading, align="left")
        if bench == "e2e":
            console.print(latency(results["e2e"]))
            console.print(e2e_notes(results["e2e"]))
        else:
            for block in body.split("\n\n"):
                console.print(_block(block))


def goals(results: dict[str, Any], quick: bool) -> Table:
    """Every goal with its figure and verdict."""
    table = Table(title="Goals" + (" (quick run)" if quick else ""), title_justify="left")
    table.add_column("goal", ratio=1)
    table.add_column("target", no_wrap=True)
    table.add_column("measured", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for row in goal_rows(results, quick=quick):
        shown = "-" if row.measured is None else figure_text(row.measured)
        verdict = f"[{STYLES[row.verdict]}]{row.verdict}[/]" if row.verdict in STYLES else "-"
        table.add_row(escape(row.goal), escape(row.target), shown, verdict)
    return table


def latency(e2e: dict[str, Any]) -> Table:
    """Latency event -> output on Kafka (ms) by offered load, per system."""
    table = Table(title="Latency, event -> output on Kafka (ms)", title_justify="left")
    table.add_column("system")
    for name in ("offered ev/s", "sustained ev/s", *PERCENTILES, "samples"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("saturated")
    for name, result in e2e["systems"].items():
        for step in _steps(result):
            lat = step["latency_ms"]
            half = " (half)" if step.get("half") else ""
            table.add_row(
                name,
                f"{step['offered_per_s']:,.0f}{half}",
                f"{step['sustained_per_s']:,.0f}",
                *(_ms(lat.get(p)) for p in PERCENTILES),
                f"{lat.get('count', 0):,}",
                "yes" if step.get("saturated") else "",
            )
        table.add_section()
    return table


def _steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A system's steps in the order run, then its half load (marked ``half``)."""
    return [*result["steps"], {**result["half_load"], "half": True}]


def e2e_notes(e2e: dict[str, Any]) -> Markdown:
    """The broker, the ratios to the baselines and what the systems do differently."""
    ratios = ", ".join(
        f"{k} {v:.2f}" for k, v in e2e.get("ratios", {}).items() if isinstance(v, float)
    )
    lines = [f"Ratios: {ratios or '-'}."]
    if "broker" in e2e:
        lines.insert(0, f"Broker: {broker_line(e2e['broker'])}.")
    if e2e.get("work"):
        lines.append(f"Not the same work: {e2e['work']}.")
    return Markdown("\n\n".join(lines))


def _block(block: str) -> Table | Markdown:
    """A paragraph of bench.md: its table (made by :func:`bench.tables.table`) as a rich
    table, numbers right-aligned; anything else through rich's Markdown renderer."""
    lines = block.strip().splitlines()
    if len(lines) < 2 or not all(line.startswith("|") for line in lines):
        return Markdown(block)
    header, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    table = Table()
    for i, name in enumerate(header):
        numbers = all(_numeric(row[i]) for row in rows if i < len(row))
        table.add_column(name, justify="right" if numbers and rows else "left")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _numeric(cell: str) -> bool:
    """``1,234``, ``0.97``, ``64 -> 70``, ``-``: a figure, shown right-aligned."""
    return bool(cell) and all(c in "0123456789,.-> x%/=()" for c in cell)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
