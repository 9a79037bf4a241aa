"""The live engine's measurement (SPEC section 11): each shard counts its own measures.

Rules of this interface:

* The engine and its retained versions share one :class:`ThreadMeasures` as
  :attr:`engine.journeys.Engine.measures` (:func:`install`, once, when the
  flow is built; a successor version inherits it). Worker threads share the
  engine, so each thread's measures go to a list of its own: a shard runs on
  one worker thread, and an activation's engine calls and its commit's
  bookkeeping happen on that thread in turn, so what a thread takes after a
  batch is that batch's.
* A shard takes them (:meth:`ThreadMeasures.take`) with its batch's actions
  into :attr:`flows.stores.states.ShardWrite.measures`
  (:func:`engine.measurement.count_action` and ``count_measure``), which the
  commit that writes the batch's states adds into the shard's measures hash:
  a crash neither loses nor doubles a count. A shopper's events that raise are
  redone from the stored state, so the measures since :meth:`ThreadMeasures.mark`
  are dropped first (:meth:`ThreadMeasures.drop`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

from engine.actions import Action
from engine.experiments import Measure
from engine.journeys import Engine
from engine.measurement import count_action, count_measure


class ThreadMeasures(list[Measure]):
    """``Engine.measures`` for worker threads: each thread appends to its own list."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def _mine(self) -> list[Measure]:
        mine: list[Measure] | None = getattr(self._local, "items", None)
        if mine is None:
            mine = self._local.items = []
        return mine

    def append(self, measure: Measure) -> None:
        self._mine().append(measure)

    def mark(self) -> int:
        """Where this thread's measures are now (for :meth:`drop`)."""
        return len(self._mine())

    def drop(self, mark: int) -> None:
        """Forget this thread's measures since ``mark``."""
        del self._mine()[mark:]

    def take(self) -> list[Measure]:
        """This thread's measures, taken out."""
        mine = self._mine()
        self._local.items = []
        return mine


def install(engine: Engine) -> ThreadMeasures:
    """Give ``engine`` and its retained versions one shared :class:`ThreadMeasures`."""
    sink = ThreadMeasures()
    engine.measures = sink
    for old in engine.retired.values():
        old.measures = sink
    return sink


def sink_of(engine: Engine) -> ThreadMeasures | None:
    """The engine's :class:`ThreadMeasures` (None: the flow did not install one)."""
    found = engine.measures
    return found if isinstance(found, ThreadMeasures) else None


def count_into(
    counts: Counter[str], actions: Iterable[Action], measures: Iterable[Measure]
) -> None:
    """Add a batch's actions and measures to a commit's measure counters."""
    for action in actions:
        count_action(counts, action)
    for measure in measures:
        count_measure(counts, measure)
