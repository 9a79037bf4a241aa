"""``tetik bench catalog``: issue 14's three goals, each against its baseline in one run.

* ``fanout`` (:mod:`bench.catalog_fanout`): one price drop fanned out to
  100,000 interested shoppers (quick: 10,000), live, one worker: seconds
  until every derived event is applied (<= 10 s), and the p99 of ordinary
  events during the fan-out over the p99 of the same stream before it
  (<= 2x).
* ``interest`` (:mod:`bench.catalog_interest`): Redis bytes per (shopper,
  product) pair of the interest index (<= 120 B).
* ``product`` (:mod:`bench.catalog_product`): the core's per-event cost
  with journeys reading ``product()`` and ``bought_together()`` over the
  same journeys without (<= 1.10x).

Each also runs alone: ``tetik bench catalog-fanout`` (``catalog-interest``,
``catalog-product``).
"""

from __future__ import annotations

from typing import Any

from bench.catalog_fanout import bench_catalog_fanout
from bench.catalog_interest import bench_catalog_interest
from bench.catalog_product import bench_catalog_product


def bench_catalog(*, quick: bool = False, broker: str | None = None) -> dict[str, Any]:
    """The three measurements, the pure ones first (the live one starts servers)."""
    return {
        "product": bench_catalog_product(quick=quick),
        "interest": bench_catalog_interest(quick=quick),
        "fanout": bench_catalog_fanout(quick=quick, broker=broker),
    }
