"""The Redis key layout: every key tetik writes, shaped for Redis Cluster's hash slots.

Rules of this interface:

* A shopper belongs to one of ``shards`` shards, :func:`shard_of` (CRC-32 of
  the identity, so every process and every tool agrees). The number of shards
  is fixed per deployment (``TETIK_SHARDS``, recorded in Redis at the first
  start and checked at every start after): it decides where each shopper's
  keys live.
* Every key of one shard carries the hash tag ``{PREFIX:S}``, so all of a
  shard's keys are in one Redis Cluster slot and a shard's batch write (states,
  timers, outbox, offsets, counters) is one atomic script call on one node.
* Deployment-wide keys carry the tag ``{PREFIX}`` (:attr:`Keys.tag`): the
  layout, the deployment marker, the watermark's shared progress, the events
  topic's id, the deployment's own counters and the rules store
  (:class:`RulesKeys`), whose WATCH/MULTI transactions span its keys and its
  channel.
* A key that is only ever touched alone, or with its own companion, carries a
  tag of its own entity instead, so that such keys spread over every node of a
  cluster rather than fill the deployment's slot: one per delivered action
  (:meth:`Keys.delivered`) and one per onsite inbox (:meth:`Keys.inbox` and
  :meth:`Keys.inbox_order`, which its script writes together).
* The prefix may not hold ``{`` or ``}`` (they would move the tags):
  :class:`Keys` refuses it with a :class:`~engine.errors.ConfigError`.
* Nothing outside this module spells a key; the baseline of ``tetik bench``
  (``bench/handwritten.py``) keeps its own keys, as a hand-written service would.

The keys (``P`` the prefix, ``s`` a shard, ``U`` a shopper, ``A`` an action id)::

    {P:s}:state:U         string  a shopper's state           the shard's batch write
    {P:s}:timers          zset    identity -> next due ms     the shard's batch write
    {P:s}:shoppers        zset    every known identity        the shard's batch write
    {P:s}:outbox          hash    record id -> unacked record the shard's batch write, settle
    {P:s}:acked           hash    actions partition -> offset the shard's batch write
    {P:s}:offsets         hash    input partition -> offset   the shard's batch write
    {P:s}:stats           hash    counter -> value            the shard's batch write
    {P:s}:measures        hash    journey|step|variant|metric|channel|reason -> count
                                                              the shard's batch write
    {P:s}:emitted         set     ids sent before Redis lost  --recover-redis
    {P:s}:sweep           hash    sweep -> cursor             the shard's batch write
    {P:s}:links           hash    anon id -> user id          the anon's shard's batch write
    {P:s}:handoff:A       string  a linked anon's last state  the anon's shard; the user's
                                                              shard deletes it (7-day TTL)
    {P:s}:waiting         hash    user -> anon it waits for   the shard's batch write
    {P:s}:seg:NAME        set     the members of segment NAME the shard's batch write
    {P:s}:rfm             hash    identity -> packed RFM inputs the shard's batch write
    {P:s}:interest:PID    hash    identity -> packed interest the shard's batch write; the
                                                              fan-out prunes lapsed entries
    {P:s}:together:PID    hash    partner -> orders with both the shard's batch write
    {P:product:PID}       string  a product's catalog fields  the fan-out stage (alone)
    {P}:stats             hash    counters of no shard        the dead-letter sink
    {P}:layout            hash    shards                      tetik run (first start)
    {P}:recovery          string  the deployment's token      tetik run (first start)
    {P}:watermark         hash    partition -> progress       tetik run, several processes
    {P}:topics            hash    topic -> its id             tetik run (each start)
    {P}:rules:...         see RulesKeys                       tetik rules, tetik run --rules
    {P}:rfm:bounds        hash    refresh instant -> boundaries the RFM refresh (one claimer)
    {P}:rfm:claim:T       string  who computes instant T      the RFM refresh (SET NX)
    {P:delivered:A}       string  the action's outcome        tetik deliver
    {P:onsite:U}          hash    action id -> message        tetik deliver (onsite)
    {P:onsite:U}:order    zset    action id -> its time       tetik deliver (onsite)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from engine.errors import ConfigError

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
    def measures(self) -> str:
        """Hash: :func:`engine.measurement.field` -> count (``tetik report --live``)."""
        return f"{self.tag}:measures"

    @property
    def emitted(self) -> str:
        """Set: action ids already in the actions topic, after Redis lost its data."""
        return f"{self.tag}:emitted"

    @property
    def sweep(self) -> str:
        """Hash: sweep name -> its cursor (the last identity done) and run."""
        return f"{self.tag}:sweep"

    @property
    def links(self) -> str:
        """Hash: anonymous id -> the user it is linked to, for the anonymous ids of
        this shard (this shard is the one writer: the authority on its links)."""
        return f"{self.tag}:links"

    def handoff(self, anon: str) -> str:
        """String: a linked anonymous id's final state for its user's shard to merge
        (msgpack of ``flows.pipeline.identity.Handoff``)."""
        return f"{self.tag}:handoff:{anon}"

    @property
    def waiting(self) -> str:
        """Hash: user -> the anonymous id whose hand-off the user's held events wait for."""
        return f"{self.tag}:waiting"

    def segment(self, name: str) -> str:
        """Set: the shard's members of the watched segment ``name`` (for export)."""
        return f"{self.tag}:seg:{name}"

    @property
    def rfm(self) -> str:
        """Hash: identity -> its packed RFM inputs (last ts, count, revenue); buyers only."""
        return f"{self.tag}:rfm"

    def interest(self, product_id: str) -> str:
        """Hash: identity -> its packed interest in the product (``flows.stores.catalog``),
        for the shard's shoppers interested in ``product_id`` (SPEC section 10)."""
        return f"{self.tag}:interest:{product_id}"

    def together(self, product_id: str) -> str:
        """Hash: partner product -> how often the shard's shoppers bought it in one order
        with ``product_id`` (bounded: ``engine.bought_together``)."""
        return f"{self.tag}:together:{product_id}"


@dataclass(frozen=True, slots=True)
class RulesKeys:
    """The rules store's keys and channel (:mod:`flows.stores.rules`), all under the
    deployment's tag: an activation WATCHes and writes several of them at once."""

    tag: str

    @property
    def seq(self) -> str:
        """String: the last version number given out (INCR)."""
        return f"{self.tag}:rules:seq"

    @property
    def meta(self) -> str:
        """Hash: version -> JSON {hash, who, at, journeys, filename, note, signature}."""
        return f"{self.tag}:rules:meta"

    @property
    def text(self) -> str:
        """Hash: version -> the rules file's bytes."""
        return f"{self.tag}:rules:text"

    @property
    def by_hash(self) -> str:
        """Hash: hash (12 hex) -> the first version with that text."""
        return f"{self.tag}:rules:by_hash"

    @property
    def active(self) -> str:
        """String: the active version number (the one GET engines poll)."""
        return f"{self.tag}:rules:active"

    @property
    def changes(self) -> str:
        """String: the change counter, +1 per activation."""
        return f"{self.tag}:rules:changes"

    @property
    def log(self) -> str:
        """Stream: the hash-chained activation history."""
        return f"{self.tag}:rules:log"

    @property
    def history(self) -> str:
        """List: an older tetik's history (read, then moved into :attr:`log`)."""
        return f"{self.tag}:rules:history"

    @property
    def changed(self) -> str:
        """Pub/sub channel: the newly active version number, on every activation
        (published inside the activation's transaction, hence tagged like a key)."""
        return f"{self.tag}:rules:changed"


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one deployment (``prefix``) with ``shards`` shards."""

    prefix: str = "tetik"
    shards: int = DEFAULT_SHARDS

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigError(
                f"TETIK_PREFIX {self.prefix!r} holds {{ or }}, which Redis Cluster reads as "
                "a hash tag; choose a prefix without braces"
            )

    @property
    def tag(self) -> str:
        """The deployment-wide hash tag, ``{PREFIX}``."""
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

    @property
    def recovery(self) -> str:
        """String: the deployment's token (:mod:`flows.stores.deployment`)."""
        return f"{self.tag}:recovery"

    @property
    def watermark(self) -> str:
        """Hash: input partition -> its progress, shared by a run's processes."""
        return f"{self.tag}:watermark"

    @property
    def topics(self) -> str:
        """Hash: topic -> its id at the last start (a recreated topic shows)."""
        return f"{self.tag}:topics"

    @property
    def rfm_bounds(self) -> str:
        """Hash: RFM refresh instant -> the base's boundaries computed for it."""
        return f"{self.tag}:rfm:bounds"

    def rfm_claim(self, instant: int) -> str:
        """String: set (NX) by the one process that computes the refresh at ``instant``."""
        return f"{self.tag}:rfm:claim:{instant}"

    @property
    def rules(self) -> RulesKeys:
        """The rules store's keys."""
        return RulesKeys(self.tag)

    def delivered(self, action_id: str) -> str:
        """String: the outcome ``tetik deliver`` recorded for an action (its own tag)."""
        return f"{{{self.prefix}:delivered:{action_id}}}"

    def product(self, product_id: str) -> str:
        """String: a product's latest catalog fields (msgpack of ``engine.catalog.Product``),
        tagged by the product: written by the fan-out stage alone."""
        return f"{{{self.prefix}:product:{product_id}}}"

    def inbox(self, user: str) -> str:
        """Hash: a shopper's onsite inbox, action id -> message (its own tag)."""
        return f"{{{self.prefix}:onsite:{user}}}"

    def inbox_order(self, user: str) -> str:
        """Sorted set: the inbox's action ids by time (the inbox's tag)."""
        return f"{self.inbox(user)}:order"

    @property
    def inboxes(self) -> str:
        """A SCAN pattern that matches every inbox (not their order sets)."""
        return f"{{{self.prefix}:onsite:*}}"

    def inbox_user(self, key: str | bytes) -> str:
        """The shopper whose inbox ``key`` (one :attr:`inboxes` matched) is."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(f"{{{self.prefix}:onsite:") : -1]
