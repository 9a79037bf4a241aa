"""``tetik bench rfm``: RFM over a generated base of 1M shoppers (100k quick).

Two tasks, each in three implementations measured in the same run, with
ratios against plain Python:

* boundaries (the 20th..80th percentiles of the three measures over the
  buyers): plain Python (:func:`engine.rfm.bounds_of`: sorts), numpy
  (:func:`engine.rfm_base.base_bounds`: ``numpy.partition``, the one the
  engine uses) and a numba kernel (:func:`nb_bounds`, partition compiled; kept
  here as the contender it lost to);
* scoring the whole base: plain Python (:func:`engine.rfm.score` per user),
  numpy (``searchsorted``) and numba (:func:`engine.rfm_base.score_base`, the
  one the engine uses).

Each result is checked against the plain Python one. Numba's first-call cost
is measured in child processes on an empty and then a filled cache directory
(``NUMBA_CACHE_DIR``): the import of the kernel module, and its first call
(compile, or load from the cache). The shoppers: last purchases spread over
two years, counts geometric (most buy once), revenue per order lognormal,
rounded to cents, so measures tie as in shops.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.tables import table
from engine.rfm import RfmBounds, RfmInputs, bounds_of, positions, score
from engine.rfm_base import base_bounds, score_base
from flows.report import say

SHOPPERS = 1_000_000
QUICK_SHOPPERS = 100_000
RUNS = 3
GOAL_BOUNDS_S = 2.0
_NOW = 1_750_000_000_000
_YEAR = 365 * 86_400_000

_FIRST_CALL = """
import sys, time
started = time.perf_counter()
import numpy as np
from engine import rfm_kernels
imported = time.perf_counter()
b = np.array([1.0, 2.0, 3.0, 4.0])
ints = np.array([1, 2, 3], np.int64)
rfm_kernels.score_arrays(b, b, b, ints, ints, np.array([1.0, 2.0, 3.0]))
print(imported - started, time.perf_counter() - imported)
"""


def shoppers(n: int, seed: int = 13) -> tuple[npt.NDArray[np.int64], ...]:
    """(last ts, count, revenue in cents) of ``n`` buyers, seeded."""
    rng = np.random.default_rng(seed)
    last = _NOW - rng.integers(0, 2 * _YEAR, n)
    count = rng.geometric(0.45, n).astype(np.int64)
    cents = np.round(rng.lognormal(4.0, 0.8, n) * 100 * count).astype(np.int64)
    return last.astype(np.int64), count, cents


def _nb_bounds_kernel(values: Any, kth: Any, spots: Any) -> Any:  # pragma: no cover - numba
    part = np.partition(values.astype(np.float64), kth)
    out = np.empty(len(spots))
    for k in range(len(spots)):
        i = spots[k, 0]
        j = spots[k, 1]
        out[k] = part[i] if j == 0 else part[i] + ((part[i + 1] - part[i]) * j) / 5
    return out


_nb_kernel: Any = None


def nb_bounds(at: int, last: Any, count: Any, revenue: Any) -> RfmBounds:
    """The boundaries with the selection compiled by numba (the contender)."""
    global _nb_kernel
    if _nb_kernel is None:
        import numba

        from engine.rfm_kernels import with_disk_cache

        _nb_kernel = with_disk_cache(numba.njit(_nb_bounds_kernel))
    spots = np.array(positions(len(count)), np.int64)
    kth = np.array(sorted({int(i) for i, _ in spots} | {int(i) + 1 for i, j in spots if j}))
    measures = [tuple(float(x) for x in _nb_kernel(v, kth, spots)) for v in (last, count, revenue)]
    return RfmBounds(
        at=at, buyers=len(count), last=measures[0], count=measures[1], revenue=measures[2]
    )


def np_scores(bounds: RfmBounds, last: Any, count: Any, revenue: Any) -> tuple[Any, Any, Any]:
    """numpy's whole-base scores: 1 + how many boundaries are strictly below."""
    return tuple(
        (1 + np.searchsorted(np.asarray(b), v.astype(np.float64), "left")).astype(np.int8)
        for b, v in ((bounds.last, last), (bounds.count, count), (bounds.revenue, revenue))
    )


def py_scores(bounds: RfmBounds, base: list[RfmInputs]) -> list[Any]:
    return [score(bounds, user) for user in base]


def _best(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def first_calls() -> dict[str, float]:
    """Import and first-call seconds of the numba kernel, cold and warm cache."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tetik-numba-bench-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            shown = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            out[f"{label}_import_s"] = round(float(shown[0]), 3)
            out[f"{label}_first_call_s"] = round(float(shown[1]), 3)
    return out


def _same_scores(python: list[Any], arrays: tuple[Any, Any, Any]) -> bool:
    r, f, m = (a.tolist() for a in arrays)
    return all(
        s is not None and (s.r, s.f, s.m) == (x, y, z)
        for s, x, y, z in zip(python, r, f, m, strict=True)
    )


def bench_rfm(*, quick: bool = False, shoppers_n: int = 0) -> dict[str, Any]:
    """Measure boundaries and whole-base scoring three ways; print and return the table."""
    n = shoppers_n or (QUICK_SHOPPERS if quick else SHOPPERS)
    say(f"bench rfm: {n:,} shoppers")
    last, count, cents = shoppers(n)
    revenue = cents / 100
    base = [
        RfmInputs(a, c, r)
        for a, c, r in zip(last.tolist(), count.tolist(), revenue.tolist(), strict=True)
    ]
    nb_bounds(_NOW, last[:10], count[:10], revenue[:10])  # compile (or load) outside the timing
    score_base(bounds_of(_NOW, base[:10]), last[:10], count[:10], revenue[:10])
    say("bench rfm: boundaries")
    py_b_s, reference = _best(lambda: bounds_of(_NOW, base), 1)
    np_b_s, np_b = _best(lambda: base_bounds(_NOW, last, count, revenue), RUNS)
    nb_b_s, nb_b = _best(lambda: nb_bounds(_NOW, last, count, revenue), RUNS)
    say("bench rfm: scoring the base")
    py_s_s, py_s = _best(lambda: py_scores(reference, base), 1)
    np_s_s, np_s = _best(lambda: np_scores(reference, last, count, revenue), RUNS)
    nb_s_s, nb_s = _best(lambda: score_base(reference, last, count, revenue), RUNS)
    say("bench rfm: numba's first call, cold and warm cache (child processes)")
    result: dict[str, Any] = {
        "shoppers": n,
        "bounds_s": {"python": py_b_s, "numpy": np_b_s, "numba": nb_b_s},
        "score_s": {"python": py_s_s, "numpy": np_s_s, "numba": nb_s_s},
        "same_results": (
            np_b == reference
            and nb_b == reference
            and _same_scores(py_s, np_s)
            and _same_scores(py_s, nb_s)
        ),
        "first_call": first_calls(),
        "engine_uses": {"bounds": "numpy", "score": "numba"},
    }
    result["bounds_s_engine"] = np_b_s
    print(rfm_table(result))
    return result


def rfm_table(result: dict[str, Any]) -> str:
    """The Markdown table of a result: seconds and ratios against plain Python."""
    rows = []
    for task, key in (("boundaries", "bounds_s"), ("score the base", "score_s")):
        times = result[key]
        used = result["engine_uses"]["bounds" if key == "bounds_s" else "score"]
        rows.append(
            [task]
            + [f"{times[impl]:.4f}" for impl in ("python", "numpy", "numba")]
            + [
                f"{times['python'] / times['numpy']:.0f}x",
                f"{times['python'] / times['numba']:.0f}x",
                f"{times['numpy'] / times['numba']:.2f}x",
                used,
            ]
        )
    head = table(
        ["task", "python s", "numpy s", "numba s", "python/numpy", "python/numba",
         "numpy/numba", "engine uses"],
        rows,
    )  # fmt: skip
    first = result["first_call"]
    return (
        f"{head}\n\nRatios are times divided (above 1: the second is faster). "
        f"{result['shoppers']:,} shoppers; every implementation gave the same "
        f"result: {result['same_results']}. numba kernel module: import "
        f"{first['cold_import_s']:.2f} s, first call {first['cold_first_call_s']:.2f} s with an "
        f"empty cache (compile), {first['warm_first_call_s']:.3f} s with the cache filled."
    )
