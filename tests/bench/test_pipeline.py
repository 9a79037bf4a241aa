"""``python -m bench.pipeline``: the live pipeline in process applies every event and
says what it cost, with and without anonymous sessions."""

from __future__ import annotations

import pytest

from bench.pipeline import main, templates

pytestmark = pytest.mark.integration


def test_the_records_are_the_clickstream_with_anonymous_sessions_or_without() -> None:
    with_anon = templates(2_000, 0.3)
    without = templates(2_000, 0.0)
    assert len(with_anon) == len(without) == 2_000
    assert any(b'"user_id"' not in t.head + t.tail for t in with_anon)  # device-only events
    assert all(b'"user_id"' in t.head + t.tail for t in without)
    assert {t.partition for t in with_anon} == {0, 1, 2, 3}


def test_the_bench_applies_every_event_and_reports_its_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--events", "3000", "--runs", "1", "--anon", "0.3"]) == 0
    shown = capsys.readouterr().out
    row = next(line for line in shown.splitlines() if line.startswith("| 30% |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1].split()[0]) > 0  # CPU per event
    assert float(cells[3]) > 0  # commit scripts per event
