"""``tetik bench compile``: time and memory of compiling a large rules file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.core import rules_text
from bench.rules_compile import bench_compile, compile_once
from cli.main import main


def test_compile_figures_are_measured() -> None:
    result = bench_compile(journeys=300)
    assert result["journeys"] == 300
    assert result["file_kb"] > 10
    assert 0 < result["load_s"] < result["total_s"] < 30
    assert result["engine_s"] > 0
    # tracing sees the whole compile: the peak is above what the engine keeps
    assert 0 < result["retained_mb"] < result["peak_mb"] < 500


def test_compile_once_builds_every_journey() -> None:
    load_s, engine_s, engine = compile_once(rules_text(120))
    assert len(engine.programs) == 120
    assert load_s > 0
    assert engine_s > 0


def test_tetik_bench_compile_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "compile", "--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["results"]["compile"]["journeys"] == 1000
    assert (
        "| journeys | file KB | load s | engine s | peak MB | kept MB |" in capsys.readouterr().out
    )
