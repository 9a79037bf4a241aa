"""``tetik bench report``: the time of ``tetik report`` on a generated log, and its goal."""

from __future__ import annotations

from bench.goals import goal_rows
from bench.journey_report import bench_report


def test_report_figures_are_measured() -> None:
    result = bench_report(events=5_000)
    assert result["events"] == 5_000
    assert 0 < result["report_s"] < 30
    assert result["rows"] > 6  # three journeys' groups and steps
    assert result["entered"] > 0


def test_the_goal_reads_only_a_million_events() -> None:
    (row,) = goal_rows({"report": {"events": 1_000_000, "report_s": 18.5}})
    assert (row.measured, row.verdict, row.target) == (18.5, "met", "<= 20 s")
    (row,) = goal_rows({"report": {"events": 1_000_000, "report_s": 23.0}})
    assert row.verdict == "missed"
    (row,) = goal_rows({"report": {"events": 100_000, "report_s": 2.0}}, quick=True)
    assert (row.measured, row.verdict) == (None, "-")
