"""``tetik bench collect`` on a small load: the real command takes every event, and the
report shows them."""

from __future__ import annotations

import os

import pytest

from bench.collect import bench_collect
from bench.markdown import render
from bench.report import machine


@pytest.mark.integration
def test_bench_collect_small(capsys: pytest.CaptureFixture[str]) -> None:
    cpus = os.sched_getaffinity(0)
    result = bench_collect(singles=200, batches=5)
    assert os.sched_getaffinity(0) == cpus  # the rest of the session keeps every core
    assert result["events_on_topic"] == 200 + 5 * result["batch_size"]
    for shape in ("single", "batch"):
        figures = result[shape]
        assert figures["events_per_s"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert result["batch"]["events_per_s"] == pytest.approx(100 * result["batch"]["requests_per_s"])
    assert "| single |" in capsys.readouterr().out
    doc = {"results": {"collect": result}, "params": {}, "machine": machine()}
    assert "## tetik collect (one core)" in render(doc)
