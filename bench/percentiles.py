"""Percentiles of a benchmark's samples, from an HDR histogram.

Rules of the interface:

* samples are non-negative integers in one unit (ms for latencies on Kafka, µs
  for the collector's requests); a sample below 1 counts as 1 and one above
  :data:`HIGHEST` as :data:`HIGHEST` (an hour in ms), so nothing is dropped;
* a percentile is exact to 3 significant digits (the histogram's precision):
  the highest value of the histogram bucket that holds the sample of nearest
  rank (``round(q / 100 * count)``, at least 1), as ``hdrh`` defines it;
* no samples, no figures: None, never 0.

Nothing here sorts the samples: memory is the histogram's, whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

HIGHEST = 3_600_000  # an hour in ms; at 3 digits the histogram is about 30 KiB
DIGITS = 3
PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


def histogram(samples: Iterable[int], highest: int = HIGHEST) -> HdrHistogram:
    """An HDR histogram (1 .. ``highest``, 3 significant digits) of ``samples``."""
    found = HdrHistogram(1, highest, DIGITS)
    for sample in samples:
        found.record_value(min(highest, max(1, int(sample))))
    return found


def percentile(samples: Iterable[int], q: float, highest: int = HIGHEST) -> int | None:
    """The ``q``-th percentile (0..100) of ``samples``, or None without samples."""
    found = histogram(samples, highest)
    if found.get_total_count() == 0:
        return None
    return int(found.get_value_at_percentile(q))


def summary(samples: list[int], highest: int = HIGHEST) -> dict[str, float | int | None]:
    """Count, p50, p95, p99, p99.9 and max of ``samples`` (None for each without any)."""
    if not samples:
        return {"count": 0, **dict.fromkeys(PERCENTILES), "max": None}
    found = histogram(samples, highest)
    figures: dict[str, float | int | None] = {"count": len(samples)}
    for name, q in PERCENTILES.items():
        figures[name] = int(found.get_value_at_percentile(q))
    figures["max"] = int(found.get_max_value())
    return figures
