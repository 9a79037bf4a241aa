"""The report's goals table: each figure against its goal, from the result document."""

from __future__ import annotations

from typing import Any

from bench.e2e import work_note
from bench.markdown import e2e_tables, goals_table, memory_table, step_table


def _core(per_s: float, ratio: float) -> dict[str, Any]:
    row = {"events_per_s": per_s, "us_per_event": 1e6 / per_s, "actions": 1}
    return {"events": 1, "core": {"100": row}, "ratio_1000_vs_10": ratio,
            "replay_events_per_s": 1.0}  # fmt: skip


def _memory(per_user: float) -> dict[str, Any]:
    row = {"users": 10, "events_per_user": 5.0, "used_memory_delta_per_user": per_user,
           "memory_usage_mean": 1.0}  # fmt: skip
    return {"sizes": [row]}


def test_goals_met_and_missed() -> None:
    text = goals_table({"core": _core(120_000, 2.5), "memory": _memory(1_100)})
    lines = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert lines["core events/s, 100 journeys (one core)"].endswith("| 120,000 | met |")
    assert lines["core per-event time, 1,000 / 10 journeys"].endswith("| 2.50 | missed |")
    assert lines["Redis bytes per active user (largest size)"].endswith("| 1,100 | met |")
    assert "live" not in text  # no e2e figures, no e2e goals


def test_goal_without_a_figure_has_no_verdict() -> None:
    e2e = {"ratios": {"throughput_tetik_vs_passthrough": None}, "systems": {}}
    text = goals_table({"e2e": e2e})
    assert "| live throughput, tetik / passthrough | >= 0.6 | - | - |" in text


def test_memory_table_without_rss() -> None:
    assert "| 10 | 5.0 | 1,100 | 1 | - | - | - |" in memory_table(_memory(1_100))


def test_memory_table_with_rss() -> None:
    memory = _memory(1_100)
    rss = {"rss_users": 7, "rss_idle_mib": 64.0, "rss_mib": 70.0, "rss_per_user_bytes": 900.0}
    memory["sizes"][0].update(rss)
    assert "| 10 | 5.0 | 1,100 | 1 | 7 | 64 -> 70 | 900 |" in memory_table(memory)


def test_timer_lateness_goal_and_step_column() -> None:
    late = {"count": 216, "p50": 205, "p95": 208, "p99": 210, "p99.9": 210, "max": 210}
    half = {"timer_lateness_ms": late}
    text = goals_table({"e2e": {"ratios": {}, "systems": {"tetik": {"half_load": half}}}})
    assert "| timer lateness p99 at half load (ms after due) | <= 50 ms | 210 | missed |" in text
    step = {"offered_per_s": 2_000, "sustained_per_s": 1_990, "lag_events": 0,
            "latency_ms": dict.fromkeys(("p50", "p95", "p99", "p99.9"), 5) | {"count": 1},
            "timer_lateness_ms": late, "cpu_pct": {}, "saturated": False}  # fmt: skip
    assert "| 205 / 210 (216) |" in step_table([step])
    none = {**step, "timer_lateness_ms": {"count": 0, "p50": None, "p99": None}}
    assert "| 1 | - |" in step_table([none])


def test_the_e2e_report_says_the_baseline_does_not_stitch_identities() -> None:
    note = work_note(0.3)
    text = e2e_tables({"systems": {}, "ratios": {}, "work": note})
    assert f"Not the same work: {note}." in text
    assert "30% of the clickstream's sessions start logged out" in text
    assert "the hand-written baseline does not" in text
    assert "Not the same work" not in e2e_tables({"systems": {}, "ratios": {}})


def test_segments_goals_from_either_bench() -> None:
    segments = {"ratio_defined": 0.98, "ratio_watched": 1.6, "ratio_watched_vs_journeys": 1.25}
    for bench in ("core", "segments-core"):
        text = goals_table({bench: {"segments": segments}})
        assert "10 segments defined, not watched / none | <= 1.3x | 0.98 | met |" in text
        assert "10 segments watched by 10 more journeys / none | <= 1.3x | 1.60 | missed |" in text
        assert "without segments | <= 1.3x | 1.25 | met |" in text
    older = goals_table({"core": {"segments": {"ratio_defined": 1.0, "ratio_watched": 2.0}}})
    assert "without segments | <= 1.3x | - | - |" in older  # results from before the baseline
