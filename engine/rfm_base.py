"""RFM over the whole customer base: arrays of every user's inputs, boundaries, scores.

Rules of this interface:

* :func:`base_bounds` computes :class:`~engine.rfm.RfmBounds` over arrays of
  every user's last-purchase ts, purchase count and revenue (users with a
  count of 0 are not buyers and are left out). It gives exactly what
  :func:`engine.rfm.bounds_of` gives: the same order statistics (found with
  ``numpy.partition``, O(n)) and the same float64 interpolation.
* :func:`score_base` scores every user of such arrays at once (0 for
  non-buyers), with the compiled kernel of :mod:`engine.rfm_kernels` (numba;
  imported only when first used, its machine code cached on disk).
* :class:`RfmBase` keeps every user's inputs in growable arrays, updated one
  user at a time (:meth:`RfmBase.update`), and tells whether anything changed
  since the last boundaries, so a refresh over an unchanged base is skipped.
* :class:`RfmRefresher` is replay's clock of refreshes (SPEC section 9):
  boundaries are computed at every epoch-aligned instant ``k * refresh``;
  those of instant ``t`` count the events before ``t`` (replay computes them
  before it handles an event at or after ``t``) and are in force from ``t``
  to the next instant. Between two events every instant sees the same base,
  so only the first instant after an event is computed, and only when a
  buyer's inputs changed. They go to the engine's :class:`~engine.rfm.RfmBook`.

Measured (``tetik bench rfm``, README "RFM"): numpy's partition beats both
plain Python and a numba kernel for the boundaries; numba wins scoring the
whole base, so only that kernel is compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engine.rfm import RfmBook, RfmBounds, RfmInputs, interpolate, positions, refresh_instant

if TYPE_CHECKING:
    from engine.journeys import Engine
    from engine.state import UserState

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
_START = 1024  # initial capacity of RfmBase's arrays


def percentiles_of(values: npt.NDArray[Any]) -> tuple[float, ...]:
    """:func:`engine.rfm.percentiles` of unsorted ``values`` (non-empty), in O(n)."""
    spots = positions(len(values))
    kth = sorted({i for i, _ in spots} | {i + 1 for i, j in spots if j})
    part = np.partition(values, kth)
    return tuple(interpolate(float(part[i]), float(part[i + 1]) if j else 0.0, j) for i, j in spots)


def base_bounds(at: int, last: Ints, count: Ints, revenue: Floats) -> RfmBounds:
    """Boundaries at ``at`` over the buyers (``count > 0``) of these parallel arrays."""
    buyers = count > 0
    n = int(np.count_nonzero(buyers))
    if n == 0:
        return RfmBounds(at=at)
    if n < len(count):
        last, count, revenue = last[buyers], count[buyers], revenue[buyers]
    return RfmBounds(
        at=at,
        buyers=n,
        last=percentiles_of(last),
        count=percentiles_of(count),
        revenue=percentiles_of(revenue),
    )


def score_base(
    bounds: RfmBounds, last: Ints, count: Ints, revenue: Floats
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """(r, f, m) of every user of the arrays: 1-5 for buyers, 0 for the others
    (and for everyone when ``bounds`` has no base)."""
    from engine.rfm_kernels import score_arrays

    if not bounds.buyers:
        zeros = np.zeros(len(count), np.int8)
        return zeros, zeros.copy(), zeros.copy()
    return score_arrays(  # type: ignore[no-any-return]
        np.asarray(bounds.last, np.float64),
        np.asarray(bounds.count, np.float64),
        np.asarray(bounds.revenue, np.float64),
        last,
        count,
        revenue,
    )


class RfmBase:
    """Every known user's RFM inputs, in arrays (see the module rules)."""

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.last: Ints = np.zeros(_START, np.int64)
        self.count: Ints = np.zeros(_START, np.int64)
        self.revenue: Floats = np.zeros(_START, np.float64)
        self.changed = False  # since the last bounds()

    def __len__(self) -> int:
        return len(self.slots)

    def update(self, key: str, inputs: RfmInputs | None) -> None:
        """Set one user's inputs (None: no purchase)."""
        slot = self.slots.get(key)
        if slot is None:
            if inputs is None:
                return
            slot = self.slots[key] = len(self.slots)
            self._grow(slot + 1)
        last, count, revenue = (
            (0, 0, 0.0) if inputs is None else (inputs.last, inputs.count, inputs.revenue)
        )
        if self.count[slot] != count or self.last[slot] != last or self.revenue[slot] != revenue:
            self.last[slot], self.count[slot], self.revenue[slot] = last, count, revenue
            self.changed = True

    def _grow(self, size: int) -> None:
        if size <= len(self.count):
            return
        capacity = max(size, 2 * len(self.count))
        self.last = np.resize(self.last, capacity)
        self.count = np.resize(self.count, capacity)
        self.revenue = np.resize(self.revenue, capacity)
        self.count[len(self.slots) :] = 0

    def bounds(self, at: int) -> RfmBounds:
        """Boundaries over the base as it is now, stamped ``at``."""
        n = len(self.slots)
        self.changed = False
        return base_bounds(at, self.last[:n], self.count[:n], self.revenue[:n])


class RfmRefresher:
    """Replay's RFM refreshes for one engine (see the module rules)."""

    def __init__(self, engine: Engine) -> None:
        from engine.rfm import rfm_inputs

        self.read = rfm_inputs
        self.every = engine.rules.rfm_refresh
        self.base = RfmBase()
        self.book = RfmBook()
        self.done: int | None = None  # the latest refresh instant dealt with
        engine.use_rfm(self.book)

    def before(self, clock: int) -> None:
        """Compute the refresh due before anything happens at ``clock``."""
        instant = refresh_instant(clock, self.every)
        if self.done is not None and instant <= self.done:
            return
        # The first instant not dealt with: the base is the same at every later one up to here.
        first = instant if self.done is None else self.done + self.every
        self.done = instant
        if self.base.changed:
            self.book.add(self.base.bounds(first))

    def after(self, state: UserState) -> None:
        """Take in what the event just handled did to its user's inputs."""
        self.base.update(state.key, self.read(state))
