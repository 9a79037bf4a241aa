"""What ``tetik bench`` shows at the end of a run: goals, latency table, verdicts, plot."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.report import document, draw, write_document
from bench.terminal import show


def _step(rate: float, p50: int, p99: int, p999: int, saturated: bool = False) -> dict[str, Any]:
    late = {"count": 0, "p50": None, "p99": None}
    latency = {"count": 1_000, "p50": p50, "p95": p99, "p99": p99, "p99.9": p999, "max": p999}
    return {"offered_per_s": rate, "sustained_per_s": rate * 0.99, "lag_events": 0,
            "latency_ms": latency, "timer_lateness_ms": late, "cpu_pct": {},
            "saturated": saturated}  # fmt: skip


def _system(steps: list[dict[str, Any]], half: dict[str, Any]) -> dict[str, Any]:
    best = max(s["sustained_per_s"] for s in steps)
    return {"steps": steps, "max_sustained_per_s": best, "saturated": True, "half_load": half}


def _e2e() -> dict[str, Any]:
    tetik = _system([_step(1_000, 7, 31, 47), _step(2_000, 9, 45, 61, saturated=True)],
                    _step(990, 6, 28, 43))  # fmt: skip
    tetik["half_load"]["timer_lateness_ms"] = {"count": 10, "p50": 20, "p99": 30}
    passthrough = _system([_step(1_000, 4, 10, 17), _step(2_000, 5, 11, 19, saturated=True)],
                          _step(1_000, 4, 12, 18))  # fmt: skip
    ratios = {"throughput_tetik_vs_passthrough": 0.99, "throughput_tetik_vs_handwritten": 3.2,
              "p99_half_load_tetik_vs_passthrough_same_load": 2.8}  # fmt: skip
    return {"systems": {"passthrough": passthrough, "tetik": tetik}, "ratios": ratios}


def _shown(quick: bool) -> tuple[dict[str, Any], str]:
    doc = document({"e2e": _e2e()}, {"what": "e2e", "quick": quick})
    out = io.StringIO()
    show(doc, out)
    return doc, out.getvalue()


def test_the_terminal_shows_the_latency_table_per_load_per_system() -> None:
    _, text = _shown(quick=False)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│")]  # fmt: skip
    assert ["tetik", "1,000", "990", "7", "31", "47", "1,000", ""] in rows
    assert ["tetik", "2,000", "1,980", "9", "45", "61", "1,000", "yes"] in rows
    assert ["tetik", "990 (half)", "980", "6", "28", "43", "1,000", ""] in rows
    assert ["passthrough", "1,000 (half)", "990", "4", "12", "18", "1,000", ""] in rows
    assert "p99.9" in text
    assert "Latency, event -> output on Kafka (ms)" in text


def test_a_full_run_keeps_met_and_missed() -> None:
    doc, text = _shown(quick=False)
    verdicts = {row["goal"]: row["verdict"] for row in doc["goals"]}
    assert verdicts["live throughput, tetik / passthrough"] == "met"
    assert verdicts["live throughput, tetik / hand-written"] == "met"
    assert verdicts["live p99 at half tetik's max, / the passthrough's p99 at the same load"] == (
        "missed"
    )
    assert " met " in text
    assert " missed " in text
    assert "indicative" not in text


def test_a_quick_run_is_indicative_and_never_met(tmp_path: Path) -> None:
    doc, text = _shown(quick=True)
    assert {row["verdict"] for row in doc["goals"]} == {"indicative"}
    assert "on a machine that may be" in text  # says why
    verdicts = [line.split("│")[-2].strip() for line in text.splitlines()
                if line.startswith("│") and ("live" in line or "timer" in line)]  # fmt: skip
    assert verdicts == ["indicative"] * 4
    assert "│ met" not in text
    assert "│ missed" not in text
    paths = write_document(tmp_path, doc)
    saved = orjson.loads(paths[0].read_bytes())
    assert saved["verdicts"].startswith("indicative: a quick run (--quick)")
    assert {row["verdict"] for row in saved["goals"]} == {"indicative"}
    markdown = paths[1].read_text()
    goals = markdown.split("## Goals")[1].split("## ")[0]
    assert goals.count("| indicative |") == 4
    assert "| met |" not in markdown
    assert "| missed |" not in markdown
    assert "Verdicts are indicative: a quick run" in markdown


def test_the_plot_tells_p99_from_p999_and_marks_the_goal_at_half_load() -> None:
    pytest.importorskip("matplotlib")  # the bench extra; installed with dev
    fig = draw(_e2e())
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    p99, p999 = lines["tetik p99"], lines["tetik p99.9"]
    assert p99.get_linestyle() != p999.get_linestyle()
    assert p99.get_marker() != p999.get_marker()
    assert list(p99.get_ydata()) == [28, 31, 45]  # half load (990/s) sorted in by load
    goal = next(line for label, line in lines.items() if label.startswith("goal at half load"))
    assert list(goal.get_xdata()) == [990]  # only at tetik's half load
    assert list(goal.get_ydata()) == pytest.approx([1.5 * 28 / 2.8])  # 1.5x passthrough there
    assert "goal" not in {text.get_text() for text in ax.texts}  # no line across every load
    flat = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1 and
            len(line.get_xdata()) > 1]  # fmt: skip
    assert flat == []
    legends = [child for child in ax.get_children() if type(child).__name__ == "Legend"]
    labels = {t.get_text() for legend in legends for t in legend.get_texts()}
    assert {"p50", "p99", "p99.9", "tetik", "passthrough"} <= labels


def test_every_bench_with_figures_shows_its_tables() -> None:
    memory = {"sizes": [{"users": 10, "events_per_user": 5.0, "used_memory_delta_per_user": 1_100,
                         "memory_usage_mean": 1.0}]}  # fmt: skip
    history = {"events": 3_000, "added_bytes": 794, "months": {"views": 24}}
    out = io.StringIO()
    show(document({"memory": memory, "history": history}, {"what": "x"}), out)
    text = out.getvalue()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines()
            if line.startswith("│")]  # fmt: skip
    assert ["10", "5.0", "1,100", "1", "-", "-", "-"] in rows  # bench.md's memory table
    assert ["added_bytes", "794"] in rows  # a bench without a section: its figures
    assert ["months.views", "24"] in rows
    memory_row = next(line for line in text.splitlines() if "1,100" in line and "5.0" in line)
    assert memory_row.startswith("│          10 │")  # numbers right-aligned
