"""Percentiles from an HDR histogram agree with sorting the samples, to 3 significant digits."""

from __future__ import annotations

import math
import random

from bench.percentiles import percentile, summary


def _sorted_nearest_rank(samples: list[int], q: float) -> int:
    """The textbook way: sort, take the sample of rank round(q% of n), at least 1."""
    ordered = sorted(samples)
    return ordered[max(1, round(q / 100 * len(ordered))) - 1]


def test_hdr_percentiles_equal_sorting_to_three_significant_digits() -> None:
    rng = random.Random(7)
    # a latency-like spread: mostly a few ms, a long tail up to minutes
    samples = [int(rng.lognormvariate(3, 1.5)) + 1 for _ in range(100_000)]
    samples += [rng.randrange(50_000, 3_000_000) for _ in range(200)]
    for q in (50.0, 90.0, 95.0, 99.0, 99.9, 99.99):
        exact = _sorted_nearest_rank(samples, q)
        found = percentile(samples, q)
        assert found is not None
        assert math.isclose(found, exact, rel_tol=1e-3), (q, found, exact)
    assert _sorted_nearest_rank(samples, 99.99) > 2048  # the tail is past the exact range


def test_small_values_are_exact() -> None:
    samples = list(range(1, 2001))
    assert [percentile(samples, q) for q in (50, 99, 99.9)] == [1000, 1980, 1998]


def test_out_of_range_samples_are_clamped_not_dropped() -> None:
    figures = summary([0, -5, 10, 10**9], highest=1_000_000)
    assert figures["count"] == 4
    assert figures["p50"] == 1  # 0 and -5 count as 1
    assert figures["max"] is not None
    assert math.isclose(figures["max"], 1_000_000, rel_tol=1e-3)


def test_no_samples_no_figures() -> None:
    assert percentile([], 99) is None
    assert summary([])["p99"] is None
