"""Compiled (numba) kernels of RFM over the whole base; imported only when needed.

Rules of this interface:

* :func:`score_arrays` scores every user of parallel arrays (last-purchase
  ts, count, revenue) against three sets of four boundaries: for each, 1 +
  how many boundaries are strictly below the value (the rule of
  :func:`engine.rfm.score`), as int8; users with a count of 0 get 0. The
  values are compared as float64, as :mod:`engine.rfm` compares them.
* It is the only kernel kept: ``tetik bench rfm`` measures it against plain
  Python and numpy (it wins by about 10x over numpy); for the boundaries
  numpy's partition won, so they are not compiled.
* Compile time never stalls a caller twice: the machine code is cached on
  disk (``cache=True``). numba puts the cache in ``__pycache__`` beside this
  file, else in the user's cache directory (or ``NUMBA_CACHE_DIR``); when
  none is writable (a read-only install without a home), in
  ``$TMPDIR/tetik-numba-UID``; failing that, it compiles once per process.
  Importing this module costs numba's import (about 0.5 s); the first call
  compiles (about 0.5 s) or loads the cache (milliseconds): see the README's
  "RFM" figures.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numba
import numpy as np


def with_disk_cache(dispatcher: Any) -> Any:
    """``dispatcher`` with its on-disk cache enabled wherever one can be written."""
    try:
        dispatcher.enable_caching()
    except RuntimeError:  # neither the source tree nor the user's cache dir is writable
        fallback = Path(tempfile.gettempdir()) / f"tetik-numba-{os.getuid()}"
        numba.config.CACHE_DIR = str(fallback)  # type: ignore[attr-defined]
        with contextlib.suppress(RuntimeError):  # nowhere at all: compile once per process
            dispatcher.enable_caching()
    return dispatcher


def _score_arrays(
    bl: Any, bc: Any, bm: Any, last: Any, count: Any, revenue: Any
) -> tuple[Any, Any, Any]:  # pragma: no cover - compiled by numba; tested through it
    n = len(count)
    r = np.zeros(n, np.int8)
    f = np.zeros(n, np.int8)
    m = np.zeros(n, np.int8)
    for u in range(n):
        if count[u] <= 0:
            continue
        x = np.float64(last[u])
        y = np.float64(count[u])
        z = np.float64(revenue[u])
        rs = 1
        fs = 1
        ms = 1
        for k in range(4):
            rs += bl[k] < x
            fs += bc[k] < y
            ms += bm[k] < z
        r[u] = rs
        f[u] = fs
        m[u] = ms
    return r, f, m


score_arrays = with_disk_cache(numba.njit(nogil=True)(_score_arrays))
