"""The Redis key layout: every key tetik writes, shaped for Redis Cluster's hash slots.

Rules of this interface:

* A shopper belongs to one of ``shards`` shards, :func:`shard_of` (CRC-32 of
  the identity, so every process and every tool agrees). The number of shards
  is fixed per deployment (``TETIK_SHARDS``, recorded in Redis at the first
  start and checked at every start after): it decides where each shopper's
  keys live.
* Every key of one shard carries the hash tag ``{PREFIX:S}``, so all of a
  shard's keys are in one Redis Cluster slot and a shard's batch write (states,
  timers, outbox, offsets, counters) is one ``MULTI``/``EXEC`` on one node.
* Deployment-wide keys carry the tag ``{PREFIX}``.
* Nothing outside this module spells a key.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DEFAULT_SHARDS = 8


def shard_of(identity: str, shards: int) -> int:
    """The shard that holds ``identity``: stable across processes, hosts and versions."""
    return zlib.crc32(identity.encode()) % shards


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard (all in one hash slot)."""

    prefix: str
    shard: int

    @property
    def tag(self) -> str:
        return f"{{{self.prefix}:{self.shard}}}"

    def state(self, identity: str) -> str:
        """A shopper's state: msgpack of ``engine.state.UserState``."""
        return f"{self.tag}:state:{identity}"

    @property
    def timers(self) -> str:
        """Sorted set: identity -> when its next step is due (epoch ms)."""
        return f"{self.tag}:timers"

    @property
    def shoppers(self) -> str:
        """Sorted set (all scores 0, read in lexicographic order): every known identity."""
        return f"{self.tag}:shoppers"

    @property
    def outbox(self) -> str:
        """Hash: record id -> a record written with the state, not yet acknowledged by Kafka."""
        return f"{self.tag}:outbox"

    @property
    def acked(self) -> str:
        """Hash: actions partition -> the highest offset acknowledged for this shard."""
        return f"{self.tag}:acked"

    @property
    def offsets(self) -> str:
        """Hash: input partition -> the highest offset this shard's states reflect."""
        return f"{self.tag}:offsets"

    @property
    def stats(self) -> str:
        """Hash: counter -> value (summed over shards by readers)."""
        return f"{self.tag}:stats"

    @property
    def emitted(self) -> str:
        """Set: action ids already in the actions topic, after Redis lost its data."""
        return f"{self.tag}:emitted"

    @property
    def sweep(self) -> str:
        """Hash: sweep name -> its cursor (the last identity done) and run."""
        return f"{self.tag}:sweep"


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one deployment (``prefix``) with ``shards`` shards."""

    prefix: str = "tetik"
    shards: int = DEFAULT_SHARDS

    @property
    def tag(self) -> str:
        return f"{{{self.prefix}}}"

    def shard(self, shard: int) -> ShardKeys:
        return ShardKeys(self.prefix, shard)

    def of(self, identity: str) -> ShardKeys:
        """The keys of the shard that holds ``identity``."""
        return ShardKeys(self.prefix, shard_of(identity, self.shards))

    def state(self, identity: str) -> str:
        return self.of(identity).state(identity)

    def all_shards(self) -> list[ShardKeys]:
        return [ShardKeys(self.prefix, s) for s in range(self.shards)]

    @property
    def stats(self) -> str:
        """Hash: deployment-wide counters (those of no shard, e.g. ``invalid``)."""
        return f"{self.tag}:stats"

    @property
    def layout(self) -> str:
        """Hash: the deployment's fixed layout (``shards``)."""
        return f"{self.tag}:layout"
