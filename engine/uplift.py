"""Uplift over a holdout: conversion rates and the difference between two groups, with
95 % intervals (SPEC section 11; ``tetik report``).

Rules of this interface:

* A group is ``(converted, entered)``; its rate is ``converted / entered`` with a
  Wilson score interval (:func:`wilson`), which stays inside [0, 1] and behaves for
  small groups and rates near 0 or 1, where the normal ("Wald") interval does not.
* The uplift of a variant over the holdout is the difference of their rates, with
  Newcombe's hybrid score interval (Newcombe 1998, method 10: each group's Wilson
  limits combined; :func:`uplift`); the relative uplift is the ratio of the rates
  minus one, without an interval (None when the holdout converted no one).
* A group with no entrant has no rate: every figure that needs it is None, never a
  division error. ``z`` is the normal quantile of the interval (1.96: 95 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the normal distribution's 97.5th percentile


@dataclass(frozen=True)
class Rate:
    """One group's conversion rate and its Wilson interval."""

    converted: int
    entered: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class Uplift:
    """A variant against the holdout: the difference of rates, its interval, the ratio."""

    variant: Rate
    holdout: Rate
    difference: float
    low: float
    high: float
    relative: float | None  # variant / holdout - 1; None when the holdout's rate is 0

    @property
    def significant(self) -> bool:
        """Whether the interval excludes no difference at all."""
        return self.low > 0 or self.high < 0


def wilson(converted: int, entered: int, z: float = Z95) -> Rate | None:
    """The rate of a group with its Wilson score interval; None without entrants."""
    if entered <= 0:
        return None
    if not 0 <= converted <= entered:
        raise ValueError(f"converted must be within 0..entered, got {converted} of {entered}")
    p = converted / entered
    z2n = z * z / entered
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / entered + z2n / (4 * entered)) / (1 + z2n)
    low = 0.0 if converted == 0 else max(0.0, centre - half)  # exact at the edges, where
    high = 1.0 if converted == entered else min(1.0, centre + half)  # rounding would stray
    return Rate(converted, entered, p, low, high)


def uplift(variant: tuple[int, int], holdout: tuple[int, int], z: float = Z95) -> Uplift | None:
    """``variant``'s uplift over ``holdout`` (each ``(converted, entered)``): Newcombe's
    interval for the difference of rates; None when either group has no entrant."""
    first, second = wilson(*variant, z=z), wilson(*holdout, z=z)
    if first is None or second is None:
        return None
    difference = first.rate - second.rate
    low = difference - math.hypot(first.rate - first.low, second.high - second.rate)
    high = difference + math.hypot(first.high - first.rate, second.rate - second.low)
    relative = first.rate / second.rate - 1 if second.rate > 0 else None
    return Uplift(first, second, difference, low, high, relative)
