"""Bought together (SPEC section 10): how often two products were bought in the same order.

Rules of this interface:

* :func:`pairs` of a ``purchase`` are the ordered pairs of distinct product ids
  among its items (each unordered pair once per order, counted both ways);
  only the first :data:`MAX_ITEMS` distinct ids of an order count, so one huge
  order costs at most ``MAX_ITEMS**2`` increments.
* Counts are bounded per product: once a product has more than
  ``2 * MAX_PARTNERS`` partners, :func:`trim` keeps the :data:`MAX_PARTNERS`
  most frequent (ties by product id). Below the bound the counts are exact
  sums, whatever the order purchases are counted in (the live engine counts
  per shard and adds the shards up; replay counts in one place).
* :func:`top` is ``bought_together(ID, N)``: up to N partners by count, most
  first, ties by product id.
* With ``history`` (replay), :class:`BoughtTogether` also keeps each
  product's counts as they stood before the purchases of each clock that
  changed them, so a step scheduled at time T (a timer, an instant) that
  runs later reads the counts of the purchases before T alone
  (``top(ID, N, before=T)``), as the live engine does when the step fires at
  T. It costs a copy of a product's counts per purchase clock that touches
  it (at most ``2 * MAX_PARTNERS`` entries each).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Final

from engine.events import Event

MAX_ITEMS: Final = 50  # distinct products of one order that count
MAX_PARTNERS: Final = 200  # partners a product keeps after a trim
MAX_N: Final = 100  # the largest N bought_together() answers


def pairs(event: Event) -> list[tuple[str, str]]:
    """Ordered (product, partner) pairs of one purchase (see the module rules)."""
    ids: list[str] = []
    for item in event.items or ():
        if item.product_id not in ids:
            ids.append(item.product_id)
            if len(ids) == MAX_ITEMS:
                break
    return [(a, b) for a in ids for b in ids if a != b]


def ranked(counts: Mapping[str, int]) -> list[str]:
    """Partner ids by count, most first, ties by id."""
    return sorted(counts, key=lambda pid: (-counts[pid], pid))


def top(counts: Mapping[str, int], n: int) -> list[str]:
    """The ``n`` partners most often bought together (see the module rules)."""
    return ranked(counts)[: max(0, min(n, MAX_N))]


def trim(counts: dict[str, int]) -> list[str]:
    """Keep the bound on ``counts`` in place; the partners dropped."""
    if len(counts) <= 2 * MAX_PARTNERS:
        return []
    dropped = ranked(counts)[MAX_PARTNERS:]
    for pid in dropped:
        del counts[pid]
    return dropped


class BoughtTogether:
    """The counts of every product in memory (``tetik replay``)."""

    def __init__(self, *, history: bool = False) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        # product -> (clocks, the counts before that clock's first purchase): module rules
        self.history: dict[str, tuple[list[int], list[dict[str, int]]]] | None = (
            {} if history else None
        )

    def record(self, pairs_of_order: Iterable[tuple[str, str]], clock: int = 0) -> None:
        """Count one order's pairs, bought at ``clock`` (replay's virtual clock)."""
        touched: set[str] = set()
        for product, partner in pairs_of_order:
            counts = self.counts.setdefault(product, {})
            if product not in touched:
                touched.add(product)
                self._remember(product, counts, clock)
            counts[partner] = counts.get(partner, 0) + 1
        for product in touched:
            trim(self.counts[product])

    def _remember(self, product: str, counts: dict[str, int], clock: int) -> None:
        if self.history is None:
            return
        clocks, before = self.history.setdefault(product, ([], []))
        if not clocks or clocks[-1] < clock:  # the first purchase of this clock
            clocks.append(clock)
            before.append(dict(counts))

    def top(self, product_id: str, n: int, before: int | None = None) -> list[str]:
        """``bought_together(ID, N)``; with ``before``, from the purchases before it."""
        counts = self.counts.get(product_id, {})
        if before is not None and self.history is not None and product_id in self.history:
            clocks, counts_before = self.history[product_id]
            at = bisect_left(clocks, before)
            if at < len(clocks):
                counts = counts_before[at]
        return top(counts, n)
