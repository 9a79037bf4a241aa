"""Live journey measurement (SPEC section 11): the shards' counters, read as report rows.

Rules of this interface:

* Each shard keeps a hash ``{P:s}:measures`` (:attr:`flows.stores.keys.ShardKeys.measures`)
  of :func:`engine.measurement.field` -> count, added to in the same commit that
  writes the shard's states (:meth:`flows.stores.states.ShardStore.commit`), so
  a crash neither loses nor doubles a count.
* :func:`read_measures` is THE reader (``tetik report --live``, the console):
  one pipeline over every shard the deployment recorded (``{P}:layout``; a
  cluster client sends it node by node), the counts summed, then
  :func:`engine.measurement.rows`: the same rows a replay of the same events gives.
"""

from __future__ import annotations

from collections import Counter

from engine.measurement import ReportRow, rows
from flows.retry import RedisClient
from flows.stores.keys import Keys


def read_counts(client: RedisClient, keys: Keys) -> Counter[str]:
    """Every shard's measure counters, summed (over the shards the deployment recorded
    at its first start, whatever ``keys`` says)."""
    stored: bytes | None = client.hget(keys.layout, "shards")  # type: ignore[assignment]
    if stored is not None and int(stored) != keys.shards:
        keys = Keys(keys.prefix, int(stored))
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.hgetall(shard.measures)
    total: Counter[str] = Counter()
    for raw in pipe.execute():
        for name, value in raw.items():
            total[name.decode()] += int(value)
    return total


def read_measures(client: RedisClient, keys: Keys, journey: str | None = None) -> list[ReportRow]:
    """The live report's rows (:func:`engine.measurement.rows`), ``journey`` alone when given."""
    return rows(read_counts(client, keys), journey)
