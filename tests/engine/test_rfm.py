"""RFM (SPEC section 9): boundaries, scores, the book of refreshes, the base's arrays.

Scores are checked against the SPEC's definition computed in exact arithmetic
(``fractions.Fraction``) with recency as the negated "ms since the last
purchase" at an arbitrary ``now``; boundaries against ``numpy.percentile``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.rfm import (
    RfmBook,
    RfmBounds,
    RfmInputs,
    RfmScore,
    bounds_of,
    percentiles,
    refresh_instant,
    rfm_inputs,
    score,
)
from engine.rfm_base import RfmBase, base_bounds, score_base
from engine.state import UserState, apply
from tests.engine.test_journeys import event

Q = (20, 40, 60, 80)
NOW = 1_750_000_000_000


def exact_bounds(values: list[Fraction]) -> list[Fraction]:
    """The 20th..80th percentiles with linear interpolation, in exact arithmetic."""
    ordered = sorted(values)
    out = []
    for k in (1, 2, 3, 4):
        position = Fraction(k * (len(ordered) - 1), 5)
        i = int(position)
        frac = position - i
        upper = ordered[i + 1] if frac else ordered[i]
        out.append(ordered[i] + (upper - ordered[i]) * frac)
    return out


def exact_rank(bounds: list[Fraction], value: Fraction) -> int:
    return 1 + sum(1 for b in bounds if b < value)


def exact_score(base: list[RfmInputs], user: RfmInputs, now: int) -> RfmScore:
    """SPEC section 9 word for word: recency is ms since the last purchase, negated."""
    recency = exact_bounds([-Fraction(now - u.last) for u in base])
    frequency = exact_bounds([Fraction(u.count) for u in base])
    monetary = exact_bounds([Fraction(u.revenue) for u in base])
    return RfmScore(
        exact_rank(recency, -Fraction(now - user.last)),
        exact_rank(frequency, Fraction(user.count)),
        exact_rank(monetary, Fraction(user.revenue)),
    )


def arrays(base: list[RfmInputs]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    return (
        np.array([u.last for u in base], np.int64),
        np.array([u.count for u in base], np.int64),
        np.array([u.revenue for u in base], np.float64),
    )


# Small ranges make ties; cents make revenues as shops send them.
_small_ts = st.integers(1_700_000_000_000, 1_700_000_000_012)
_wide_ts = st.integers(1_600_000_000_000, 1_750_000_000_000)
buyers = st.builds(
    RfmInputs,
    st.one_of(_small_ts, _wide_ts),
    st.integers(1, 6) | st.integers(1, 5000),
    st.integers(1, 12).map(lambda c: c * 25 / 100) | st.integers(1, 10**9).map(lambda c: c / 100),
)
bases = st.lists(buyers, min_size=1, max_size=60)


# -- boundaries -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(bases)
@example([RfmInputs(5, 1, 1.0)])
@example([RfmInputs(5, 1, 1.0), RfmInputs(5, 1, 1.0)])
@example([RfmInputs(1, 1, 0.1), RfmInputs(2, 3, 0.2), RfmInputs(4, 3, 0.3)])
@example([RfmInputs(9, 2, 5.0)] * 3 + [RfmInputs(1, 7, 0.5)])
def test_boundaries_equal_numpy_percentile(base: list[RfmInputs]) -> None:
    bounds = bounds_of(NOW, base)
    assert bounds.buyers == len(base)
    last, count, revenue = arrays(base)
    for ours, values in ((bounds.last, last), (bounds.count, count), (bounds.revenue, revenue)):
        expected = np.percentile(values, Q)  # method="linear", numpy's default
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)
        assert list(ours) == sorted(ours)
    # The recency shift: percentiles of (last - now) are those of last, minus now.
    np.testing.assert_allclose(
        np.array(bounds.last) - NOW, np.percentile(last - NOW, Q), rtol=1e-9, atol=1e-3
    )


@settings(max_examples=300, deadline=None)
@given(bases, st.lists(st.booleans(), max_size=60))
def test_array_boundaries_equal_the_reference_exactly(
    base: list[RfmInputs], non_buyers: list[bool]
) -> None:
    last, count, revenue = arrays(base)
    # Users with a count of 0 are in the arrays but not in the base.
    extra = len(non_buyers)
    last = np.concatenate([last, np.full(extra, 7, np.int64)])
    count = np.concatenate([count, np.zeros(extra, np.int64)])
    revenue = np.concatenate([revenue, np.full(extra, 1e9)])
    assert base_bounds(NOW, last, count, revenue) == bounds_of(NOW, base)


def test_an_empty_base_has_no_boundaries_and_scores_nobody() -> None:
    empty = np.zeros(3, np.int64)
    bounds = base_bounds(NOW, empty, empty, np.zeros(3))
    assert bounds == bounds_of(NOW, []) == RfmBounds(at=NOW)
    assert score(bounds, RfmInputs(NOW, 3, 10.0)) is None
    assert [a.tolist() for a in score_base(bounds, empty, empty, np.zeros(3))] == [[0] * 3] * 3


def test_percentiles_interpolate_between_neighbours() -> None:
    # n = 6: the 20th percentile sits at index 1.0, the 40th at 2.0, ... exactly.
    assert percentiles([10, 20, 30, 40, 50, 60]) == (20.0, 30.0, 40.0, 50.0)
    # n = 2: a fifth of the way, two fifths, ...
    assert percentiles([0, 100]) == (20.0, 40.0, 60.0, 80.0)
    assert percentiles([7]) == (7.0, 7.0, 7.0, 7.0)


# -- scores -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(bases, st.data())
@example([RfmInputs(5, 1, 1.0)], None)
def test_scores_equal_the_exact_definition(base: list[RfmInputs], data: st.DataObject) -> None:
    bounds = bounds_of(NOW - 10**9, base)  # computed earlier: recency does not drift
    now = NOW if data is None else data.draw(st.integers(NOW, NOW + 10**11))
    for user in base:
        assert score(bounds, user) == exact_score(base, user, now)
    if data is None:
        return
    # Users outside the base (bought since the refresh): integer measures stay exact.
    for _ in range(5):
        revenue = data.draw(st.sampled_from(base)).revenue
        probe = RfmInputs(data.draw(_wide_ts | _small_ts), data.draw(st.integers(1, 6000)), revenue)
        assert score(bounds, probe) == exact_score(base, probe, now)


@settings(max_examples=100, deadline=None)
@given(bases, st.lists(st.booleans(), max_size=20))
def test_the_compiled_base_scores_equal_one_by_one(
    base: list[RfmInputs], non_buyers: list[bool]
) -> None:
    bounds = bounds_of(NOW, base)
    last, count, revenue = arrays(base)
    count = np.concatenate([count, np.zeros(len(non_buyers), np.int64)])
    last = np.concatenate([last, np.zeros(len(non_buyers), np.int64)])
    revenue = np.concatenate([revenue, np.zeros(len(non_buyers))])
    r, f, m = score_base(bounds, last, count, revenue)
    got = [
        RfmScore(int(rs), int(fs), int(ms)) if rs else None
        for rs, fs, ms in zip(r, f, m, strict=True)
    ]
    assert got == [score(bounds, u) for u in base] + [None] * len(non_buyers)


def test_a_value_equal_to_a_boundary_is_not_above_it() -> None:
    bounds = RfmBounds(at=0, buyers=5, last=(1, 2, 3, 4), count=(1, 2, 3, 4), revenue=(1, 2, 3, 4))
    assert score(bounds, RfmInputs(3, 3, 3.0)) == RfmScore(3, 3, 3)  # 1 and 2 are below, 3 not
    assert score(bounds, RfmInputs(4, 5, 0.5)) == RfmScore(4, 5, 1)


def test_recent_buyers_score_high_and_ties_score_alike() -> None:
    base = [RfmInputs(NOW - 10 * d, 1, 5.0) for d in range(10)]  # last purchases 0..90 ms ago
    bounds = bounds_of(NOW, base)
    assert score(bounds, base[0]).r == 5  # type: ignore[union-attr]  # the most recent
    assert score(bounds, base[-1]).r == 1  # type: ignore[union-attr]  # the longest ago
    # Everyone bought once for 5.0: every boundary equals the value, none is below.
    assert {(s.f, s.m) for s in (score(bounds, u) for u in base) if s} == {(1, 1)}


def test_the_score_string_joins_r_f_m() -> None:
    assert RfmScore(5, 4, 5).score == "545"


def test_no_purchase_no_score() -> None:
    bounds = bounds_of(NOW, [RfmInputs(NOW, 1, 1.0)])
    state = UserState(key="u1")
    apply(state, event("view_product", NOW, product_id="p1"), NOW)
    assert rfm_inputs(state) is None
    assert score(bounds, rfm_inputs(state)) is None
    assert score(None, RfmInputs(NOW, 1, 1.0)) is None  # no boundaries yet


def test_rfm_inputs_read_the_purchases() -> None:
    state = UserState(key="u1")
    apply(state, event("purchase", NOW - 50, revenue=10.1), NOW)
    apply(state, event("purchase", NOW - 20, revenue=20.2), NOW)
    apply(state, event("purchase", NOW - 90, items=[{"product_id": "p", "price": 5}]), NOW)
    assert rfm_inputs(state) == RfmInputs(NOW - 20, 3, 35.3)


# -- the book and the base --------------------------------------------------------


def test_the_book_gives_the_latest_refresh_at_or_before_now() -> None:
    book = RfmBook()
    assert book.at(NOW) is None
    first, second = RfmBounds(at=1000, buyers=1), RfmBounds(at=2000, buyers=2)
    book.add(first)
    book.add(second)
    assert book.at(999) is None  # before any refresh: no boundaries
    assert book.at(1000) is first
    assert book.at(1999) is first
    assert book.at(2000) is second
    assert book.at(10**15) is second
    with pytest.raises(ValueError, match="not after the latest"):
        book.add(RfmBounds(at=2000))
    kept = RfmBook(keep=1)
    kept.add(first)
    kept.add(second)
    assert len(kept) == 1
    assert kept.latest is second
    assert kept.at(1500) is second  # older ones were dropped: the oldest kept stands in


def test_refresh_instants_are_epoch_aligned() -> None:
    hour = 3_600_000
    assert refresh_instant(5 * hour, hour) == 5 * hour
    assert refresh_instant(5 * hour + 1, hour) == 5 * hour
    assert refresh_instant(6 * hour - 1, hour) == 5 * hour


def test_the_base_tracks_changes_and_grows() -> None:
    base = RfmBase()
    base.update("nobody", None)
    assert len(base) == 0
    assert not base.changed
    for i in range(3000):  # past the initial capacity
        base.update(f"u{i}", RfmInputs(NOW - i, 1 + i % 7, float(i)))
    assert base.changed
    bounds = base.bounds(NOW)
    assert not base.changed
    assert bounds == bounds_of(NOW, [RfmInputs(NOW - i, 1 + i % 7, float(i)) for i in range(3000)])
    base.update("u5", RfmInputs(NOW - 5, 1 + 5 % 7, 5.0))  # the same inputs: no change
    assert not base.changed
    base.update("u5", None)  # u5 is no longer a buyer (its window emptied)
    assert base.changed
    assert base.bounds(NOW).buyers == 2999


def test_the_kernel_cache_falls_back_to_a_temporary_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numba

    from engine.rfm_kernels import with_disk_cache

    class Dispatcher:
        """Stands for a numba dispatcher whose cache locations are read-only."""

        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.cached = False

        def enable_caching(self) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("cannot cache function: no locator available")
            self.cached = True

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    assert with_disk_cache(Dispatcher(0)).cached
    assert numba.config.CACHE_DIR == ""  # the usual locations work: left alone
    assert with_disk_cache(Dispatcher(1)).cached
    assert "tetik-numba-" in numba.config.CACHE_DIR
    assert not with_disk_cache(Dispatcher(2)).cached  # nowhere: compiled per process
