"""RFM: a shopper's recency, frequency and monetary scores against the whole base (SPEC 9).

Rules of this interface:

* The base is every user with at least one purchase. Per user the measures
  are (:func:`rfm_inputs`): the ts of the last purchase, the all-time purchase
  count and the all-time revenue.
* Boundaries (:class:`RfmBounds`) are the 20th, 40th, 60th and 80th
  percentiles of each measure over the base, with linear interpolation
  (numpy's default method), computed by :func:`percentiles` from the sorted
  values. A score is ``1 +`` the number of boundaries strictly below the
  user's value, so 1-5 (:func:`score`); ``rfm().score`` is the three digits
  joined (``"545"``).
* Recency is kept on timestamps. SPEC scores recency as the negated "ms since
  the last purchase", ``last - now``; each percentile of ``last - now`` over
  the base is the same percentile of ``last``, minus ``now`` (a shift moves
  every order statistic and their interpolation alike), and ``P - now <
  last_u - now`` holds exactly when ``P < last_u``. So the recency boundaries
  are percentiles of ``last`` and the score compares ``last_u`` with them:
  no ``now`` at all, and boundaries computed at one refresh stay right as the
  clock moves on until the next (they do not drift).
* Exactness: the interpolation index is computed in integers (the ``q``-th
  percentile of ``n`` values sits at ``k * (n - 1) / 5`` for ``q = 20k``), not
  as a float like numpy's ``0.2 * (n - 1)``, and a boundary between
  neighbours ``a <= b`` is ``a + (b - a) * j / 5`` (``j`` = 0..4) in float64.
  For integer measures below 2**53 (timestamps, counts) a boundary that is
  mathematically an integer is computed exactly and any other is at least
  0.2 from every integer, so scores equal the exact-arithmetic definition,
  and the shift argument above holds in float64 too. Revenue is a float: its
  boundaries equal numpy's to float precision (tests compare with
  ``numpy.percentile``).
* A user without purchases has no score (``None``, ``null`` in rules); so
  does every user while the boundaries are not yet computed or the base is
  empty.
* :class:`RfmBook` keeps boundaries by refresh instant: :meth:`RfmBook.at`
  gives those in force at a time (the latest refresh at or before it; none
  before the first), so a
  timer that replay fires lazily sees the boundaries the live engine would
  have had at its due time.
* Pure Python, no numpy: scoring one user is three short comparisons. The
  whole-base computations (arrays, numpy, numba) are in :mod:`engine.rfm_base`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

import msgspec

from engine.durations import HOUR
from engine.state import UserState

DEFAULT_REFRESH_MS: Final = HOUR  # the rules' `rfm_refresh` when not set
QUINTILES: Final = 5  # boundaries at 20k percent, k = 1..4


class RfmScore(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One user's scores, each 1-5 (5: most recent, most frequent, most spent)."""

    r: int
    f: int
    m: int

    @property
    def score(self) -> str:
        """The three scores joined, e.g. ``"545"``."""
        return f"{self.r}{self.f}{self.m}"


class RfmInputs(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One buyer's measures: last purchase ts (ms), purchase count, revenue."""

    last: int
    count: int
    revenue: float


class RfmBounds(msgspec.Struct, frozen=True, array_like=True, kw_only=True):
    """The base's boundaries computed at refresh instant ``at``.

    ``last``, ``count`` and ``revenue`` hold four non-decreasing boundaries
    each (20th..80th percentiles), or nothing when the base was empty.
    """

    at: int
    buyers: int = 0
    last: tuple[float, ...] = ()
    count: tuple[float, ...] = ()
    revenue: tuple[float, ...] = ()


def rfm_inputs(state: UserState) -> RfmInputs | None:
    """A user's RFM measures, or None without a purchase: THE one reader of RFM
    inputs, from the all-time rollups (:mod:`engine.history`): the last
    purchase's ts, the all-time purchase count and revenue."""
    rollup = state.rollups.get("purchase")
    if rollup is None or not rollup.n:
        return None
    return RfmInputs(rollup.last, rollup.n, round(rollup.rev, 9))


def interpolate(a: float, b: float, j: int) -> float:
    """``j / 5`` of the way from ``a`` to ``b`` (float64; exact for integer results)."""
    return a if j == 0 else a + ((b - a) * j) / QUINTILES


def positions(n: int) -> list[tuple[int, int]]:
    """For each boundary of ``n`` sorted values: (index below, fifths towards the next)."""
    return [divmod(k * (n - 1), QUINTILES) for k in range(1, QUINTILES)]


def percentiles(ordered: Sequence[float]) -> tuple[float, ...]:
    """The 20th, 40th, 60th and 80th percentiles of ascending ``ordered`` (non-empty)."""
    return tuple(
        interpolate(float(ordered[i]), float(ordered[i + 1]) if j else 0.0, j)
        for i, j in positions(len(ordered))
    )


def bounds_of(at: int, base: Sequence[RfmInputs]) -> RfmBounds:
    """Boundaries over ``base`` (one :class:`RfmInputs` per buyer), in plain Python.

    The reference implementation; :func:`engine.rfm_base.base_bounds` computes
    the same over arrays (the live and replay path).
    """
    if not base:
        return RfmBounds(at=at)
    return RfmBounds(
        at=at,
        buyers=len(base),
        last=percentiles(sorted(u.last for u in base)),
        count=percentiles(sorted(u.count for u in base)),
        revenue=percentiles(sorted(u.revenue for u in base)),
    )


def _rank(bounds: tuple[float, ...], value: float) -> int:
    """1 + how many boundaries are strictly below ``value``."""
    return 1 + sum(1 for b in bounds if b < value)


def score(bounds: RfmBounds | None, inputs: RfmInputs | None) -> RfmScore | None:
    """A user's scores against ``bounds``; None without purchases or boundaries."""
    if inputs is None or bounds is None or not bounds.buyers:
        return None
    return RfmScore(
        _rank(bounds.last, inputs.last),
        _rank(bounds.count, inputs.count),
        _rank(bounds.revenue, inputs.revenue),
    )


class RfmBook:
    """Boundaries by refresh instant (see the module rules).

    ``keep`` bounds how many are kept (the oldest go first); replay keeps every
    one it computed (one per refresh instant whose base changed), the live
    engine a few.
    """

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self._bounds: list[RfmBounds] = []
        self._ats: list[int] = []
        self._pruned = False  # whether older refreshes were dropped

    def __len__(self) -> int:
        return len(self._bounds)

    @property
    def latest(self) -> RfmBounds | None:
        return self._bounds[-1] if self._bounds else None

    def add(self, bounds: RfmBounds) -> None:
        """Record the boundaries of a refresh later than every one held."""
        if self._ats and bounds.at <= self._ats[-1]:
            raise ValueError(
                f"rfm boundaries at {bounds.at} are not after the latest ({self._ats[-1]})"
            )
        self._bounds.append(bounds)
        self._ats.append(bounds.at)
        if self.keep is not None and len(self._bounds) > self.keep:
            del self._bounds[0], self._ats[0]
            self._pruned = True

    def at(self, now: int) -> RfmBounds | None:
        """The boundaries in force at ``now``: the latest refresh at or before it.

        None before the first refresh (nothing was computed then); when ``now``
        precedes every refresh kept but older ones were dropped, the oldest kept.
        """
        index = bisect.bisect_right(self._ats, now) - 1
        if index < 0:
            return self._bounds[0] if self._pruned else None
        return self._bounds[index]


def refresh_instant(now: int, refresh_ms: int) -> int:
    """The latest refresh instant at or before ``now`` (epoch-aligned multiples)."""
    return now - now % refresh_ms
