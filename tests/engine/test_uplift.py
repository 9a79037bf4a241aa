"""engine.uplift against independent computations: the Wilson interval found by
bisection on the score test itself, and Newcombe's (1998) published example."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.uplift import Z95, uplift, wilson


def score_limits(converted: int, entered: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson interval from its definition: every p whose score test does not reject
    the observed rate, |p_hat - p| <= z * sqrt(p (1 - p) / n), found by bisection."""
    p_hat = converted / entered

    def inside(p: float) -> bool:
        return abs(p_hat - p) <= z * math.sqrt(p * (1 - p) / entered)

    def edge(outside: float, within: float) -> float:
        for _ in range(200):
            middle = (outside + within) / 2
            outside, within = (outside, middle) if inside(middle) else (middle, within)
        return within

    low = 0.0 if converted == 0 else edge(0.0, p_hat)
    high = 1.0 if converted == entered else edge(1.0, p_hat)
    return low, high


@given(st.integers(1, 5_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_is_the_score_tests_interval(group: tuple[int, int]) -> None:
    converted, entered = group
    rate = wilson(converted, entered)
    assert rate is not None
    low, high = score_limits(converted, entered)
    assert rate.rate == converted / entered
    assert rate.low == pytest.approx(low, abs=1e-9)
    assert rate.high == pytest.approx(high, abs=1e-9)
    assert 0 <= rate.low <= rate.rate <= rate.high <= 1


def test_newcombes_published_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873-890, Table II, 56/70 - 48/80,
    method 10 (score intervals combined): 0.0524 to 0.3339."""
    found = uplift((56, 70), (48, 80))
    assert found is not None
    assert found.difference == pytest.approx(0.2)
    assert round(found.low, 4) == 0.0524
    assert round(found.high, 4) == 0.3339
    assert found.significant
    assert found.relative == pytest.approx(0.8 / 0.6 - 1)


@given(
    st.integers(1, 2_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.integers(1, 2_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
)
def test_the_difference_interval_combines_each_groups_score_limits(
    variant: tuple[int, int], holdout: tuple[int, int]
) -> None:
    found = uplift(variant, holdout)
    assert found is not None
    p1, p2 = variant[0] / variant[1], holdout[0] / holdout[1]
    (l1, u1), (l2, u2) = score_limits(*variant), score_limits(*holdout)
    assert found.low == pytest.approx(p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    assert found.high == pytest.approx(p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    assert -1 <= found.low <= found.difference <= found.high <= 1


def test_groups_without_entrants_have_no_figures() -> None:
    assert wilson(0, 0) is None
    assert uplift((3, 10), (0, 0)) is None
    no_holdout_conversions = uplift((3, 10), (0, 10))
    assert no_holdout_conversions is not None
    assert no_holdout_conversions.relative is None
    with pytest.raises(ValueError, match=r"within 0\.\.entered"):
        wilson(11, 10)
