"""``tetik bench rfm``: the three implementations agree and the figures are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.rfm import nb_bounds, np_scores, shoppers
from cli.main import main
from engine.rfm import RfmInputs, bounds_of
from engine.rfm_base import score_base


def test_the_contenders_agree_with_the_reference() -> None:
    last, count, cents = shoppers(5_001)
    revenue = cents / 100
    base = [
        RfmInputs(a, c, r)
        for a, c, r in zip(last.tolist(), count.tolist(), revenue.tolist(), strict=True)
    ]
    reference = bounds_of(7, base)
    assert nb_bounds(7, last, count, revenue) == reference
    for ours, theirs in zip(
        np_scores(reference, last, count, revenue),
        score_base(reference, last, count, revenue),
        strict=True,
    ):
        assert np.array_equal(ours, theirs)
    # Most shoppers buy once: counts tie, as in shops.
    assert reference.count[0] == 1.0


def test_bench_rfm_measures_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "rfm", "--out", str(tmp_path), "--quick"]) == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    result = doc["results"]["rfm"]
    assert result["shoppers"] == 100_000
    assert result["same_results"] is True
    assert all(v > 0 for v in result["bounds_s"].values())
    assert result["first_call"]["cold_first_call_s"] > 0
    shown = capsys.readouterr().out
    assert "| boundaries |" in shown
    assert "| score the base |" in shown
    assert "RFM boundaries over 1M shoppers" in (tmp_path / "bench.md").read_text()


def test_the_command_line_offers_every_benchmark() -> None:
    from bench.cli import WHAT
    from cli.main import _parser

    for name in WHAT:  # argparse exits on a name it does not offer
        assert _parser().parse_args(["bench", name]).what == name
