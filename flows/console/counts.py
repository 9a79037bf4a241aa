"""Live counts for the journeys graph and the experiment results, from the engine's Redis.

Rules of this interface:

* The counts are the engine's live measures (:mod:`flows.stores.measures`,
  the same counters ``tetik report --live`` reads): one pipeline over every
  shard, fields ``journey|step|variant|metric|channel|reason``.
* :func:`by_step` sums them per journey and step path over variants,
  channels and reasons: ``entered`` (all entrants), ``holdout`` (those of
  them held out) and ``converted`` on the trigger (path ``entry``);
  ``sent``, ``suppressed``, ``delivered``, ``opened``, ``clicked`` on each
  step; in that order, zeros left out.
* A journey or step nothing was counted for yet has no entry: its box shows
  no numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from engine.experiments import HOLDOUT
from engine.measurement import SEP, ReportRow
from flows.retry import RedisClient
from flows.stores.keys import Keys
from flows.stores.measures import read_counts, read_measures

ORDER = ("entered", "holdout", "converted", "sent", "suppressed", "delivered", "opened", "clicked")
Graphs = dict[str, dict[str, dict[str, int]]]  # journey -> path -> metric -> count


def read(client: RedisClient, keys: Keys) -> Counter[str]:
    """Every live measure counter, summed over the shards."""
    return read_counts(client, keys)


def report(client: RedisClient, keys: Keys) -> list[ReportRow]:
    """The live report's rows (:func:`engine.measurement.rows`)."""
    return read_measures(client, keys)


def by_step(counts: Mapping[str, int]) -> Graphs:
    """Per journey and step path, the graph's counts (see the module rules)."""
    summed: dict[str, dict[str, Counter[str]]] = {}
    for name, n in counts.items():
        parts = name.split(SEP)
        if len(parts) != 6 or not n or parts[3] not in ORDER:
            continue
        journey, step, variant, metric = parts[:4]
        per = summed.setdefault(journey, {}).setdefault(step or "entry", Counter())
        per[metric] += n
        if metric == "entered" and variant == HOLDOUT:
            per["holdout"] += n  # of the entrants, those held out
    return {
        journey: {path: {m: per[m] for m in ORDER if per[m]} for path, per in steps.items()}
        for journey, steps in summed.items()
    }
