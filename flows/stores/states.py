"""Shoppers' states, timers and the shard's books in Redis: one shard, one slot, one write.

Rules of this interface (the key layout is :mod:`flows.stores.keys`):

* A shard has one writer at a time: the pipeline's :class:`~flows.pipeline.shard.ShardLogic`
  for that shard. So a state read from Redis is never older than the shard's
  own last write, and the shard may cache what it wrote.
* :meth:`ShardStore.commit` writes one :class:`ShardWrite` atomically, in
  one script call over the shard's keys (one round trip, one command for
  redis-py to pack: a ``MULTI`` of one command per shopper cost a third of
  the batch): the changed states (``SET ... PX ttl``), each one's next
  due time in the timer index (``ZADD``, or ``ZREM`` when nothing is due), new
  identities in the shopper index, the records to emit in the outbox, the
  outbox entries Kafka acknowledged since (removed), the input offsets the
  states now reflect, the counters and the journey measures' counts
  (``{P:s}:measures``). It returns the shard's next due time.
  A crash leaves either all of it or none of it.
* The timer index holds one entry per shopper with a pending step, scored by
  when to look (its due time, or later for a step that failed and backs off):
  the pipeline keeps only the earliest score in memory, never the index.
* Only what changed is written: a shopper enters the shopper index when its
  first state is written (``new``), and leaves the timer index when its last
  due step is done (``cleared``).
* A state lives as long as its longest window (``ttl_ms``) and at least a day
  past its next due step.
* Counters are per shard; :func:`read_stats` sums them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, NoScriptError, TryAgainError

from engine.bought_together import MAX_PARTNERS
from engine.errors import ConfigError
from engine.state import UserState, loads
from flows.retry import RedisClient
from flows.stores.keys import Keys, ShardKeys

DAY_MS = 86_400_000
_packer = msgspec.msgpack.Encoder()  # the commit's one argument (see _COMMIT)
HANDOFF_TTL_MS = 7 * DAY_MS  # a hand-off its user's shard never took expires after this


@dataclass
class ShardWrite:
    """Everything one batch of a shard changed, written at once by :meth:`ShardStore.commit`."""

    states: list[tuple[str, bytes, int | None]] = field(default_factory=list)  # id, data, due
    outbox: dict[str, bytes] = field(default_factory=dict)  # record id -> packed record
    confirmed: list[str] = field(default_factory=list)  # outbox ids Kafka acknowledged
    acked: dict[int, int] = field(default_factory=dict)  # actions partition -> offset
    offsets: dict[str, int] = field(default_factory=dict)  # input partition -> offset
    counts: Counter[str] = field(default_factory=Counter)
    looks: dict[str, int] = field(default_factory=dict)  # identity -> look again at (backoff)
    forgotten: list[str] = field(default_factory=list)  # identities whose state is gone
    sweep: dict[str, str] = field(default_factory=dict)  # sweep name -> cursor
    new: set[str] = field(default_factory=set)  # identities not in the shopper index yet
    cleared: set[str] = field(default_factory=set)  # had a due step, now have none
    # Identity (flows.pipeline.identity): anon -> (user, hand-off record) linked now,
    # users that start waiting (user -> anon) and users done waiting.
    moved: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    waited: set[str] = field(default_factory=set)
    # Segments and RFM (flows.pipeline.books): (segment, identity, member now) changes of
    # stored memberships, and identity -> packed RFM inputs (b"": no longer a buyer).
    members: list[tuple[str, str, bool]] = field(default_factory=list)
    rfm: dict[str, bytes] = field(default_factory=dict)
    # The catalog (flows.stores.catalog): (product, identity) -> packed interest (b"":
    # none now), and (product, partner) -> orders that bought both, to add.
    interest: dict[tuple[str, str], bytes] = field(default_factory=dict)
    together: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Journey measurement (flows.pipeline.measures): engine.measurement field -> count.
    measures: Counter[str] = field(default_factory=Counter)

    def state(self, identity: str, data: bytes, due: int | None, before: int | None) -> None:
        """Queue a shopper's new state; ``before`` is its due time as it was read."""
        self.states.append((identity, data, due))
        if due is None and before is not None:
            self.cleared.add(identity)

    def empty(self) -> bool:
        return not (
            self.states
            or self.outbox
            or self.confirmed
            or self.offsets
            or any(self.counts.values())
            or self.looks
            or self.forgotten
            or self.sweep
            or self.moved
            or self.waiting
            or self.waited
            or self.members
            or self.rfm
            or self.interest
            or self.together
            or any(self.measures.values())
        )


HEAD = 64  # timer entries a commit returns at most (TimerHead)
HORIZON_MS = 60_000  # ... due within this long of the commit's clock


class TimerHead:
    """The earliest entries of a shard's timer index as a commit left it: those due
    within :data:`HORIZON_MS` (at most :data:`HEAD`), and the score of the entry after
    them. The shard is the index's only writer, so until its next commit this says
    which shoppers are due without reading Redis. From a commit's reply it is parsed
    as far as it is read (most heads are replaced before a timer pass reads them)."""

    __slots__ = ("_entries", "_raw", "after")

    def __init__(self, entries: tuple[tuple[str, int], ...] = (), after: int | None = None) -> None:
        self._raw: list[bytes] = []
        self._entries: tuple[tuple[str, int], ...] | None = entries
        self.after = after  # the next entry's score (None: there is none)

    @classmethod
    def parse(cls, found: list[bytes]) -> TimerHead:
        """From the commit script's reply: id, score, ..., then the next score or ''."""
        rest = found[-1]
        head = cls((), int(float(rest)) if rest else None)
        head._raw, head._entries = found, None
        return head

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        if self._entries is None:
            raw = self._raw
            self._entries = tuple(
                (raw[i].decode(), int(float(raw[i + 1]))) for i in range(0, len(raw) - 1, 2)
            )
        return self._entries

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimerHead):
            return NotImplemented
        return (self.entries, self.after) == (other.entries, other.after)

    def __repr__(self) -> str:
        return f"TimerHead({self.entries!r}, {self.after!r})"

    @property
    def first(self) -> int | None:
        """The earliest due time in the index (None: nothing is pending)."""
        if self._entries is None:
            return int(float(self._raw[1])) if len(self._raw) > 1 else self.after
        return self._entries[0][1] if self._entries else self.after

    def due(self, until: int) -> list[str] | None:
        """The identities due at or before ``until``, earliest first; None when more may
        be due than the head holds (read the index)."""
        if self.after is not None and self.after <= until:
            return None
        return [identity for identity, score in self.entries if score <= until]


class ShardStore:
    """One shard's keys in one Redis (or one Redis Cluster node: they share a slot)."""

    def __init__(self, client: RedisClient, keys: ShardKeys, ttl_ms: int) -> None:
        self.client = client
        self.keys = keys
        self.ttl_ms = ttl_ms
        self._commit = client.register_script(_COMMIT)  # local: hashes the script, no call

    def read(self, identities: Sequence[str]) -> list[bytes | None]:
        """The stored states of ``identities`` (None where there is none), one ``MGET``."""
        if not identities:
            return []
        found: list[bytes | None] = self.client.mget(  # type: ignore[assignment]
            [self.keys.state(i) for i in identities]
        )
        return found

    def load(self, identity: str) -> UserState | None:
        data = self.read([identity])[0]
        return None if data is None else loads(data)

    def offsets(self) -> dict[str, int]:
        """Input partition -> the highest offset this shard's stored states reflect."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.offsets)  # type: ignore[assignment]
        return {k.decode(): int(v) for k, v in raw.items()}

    def next_due(self) -> int | None:
        """The earliest score in the timer index, or None when nothing is pending."""
        first: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
            self.keys.timers, 0, 0, withscores=True
        )
        return int(first[0][1]) if first else None

    def due(self, until: int, limit: int) -> list[str]:
        """Up to ``limit`` identities whose timer score is at or before ``until``."""
        found: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            self.keys.timers, "-inf", until, start=0, num=limit
        )
        return [m.decode() for m in found]

    def scheduled(self) -> list[str]:
        """Every identity in the timer index, earliest first (the end of a bounded run)."""
        found: list[bytes] = self.client.zrange(self.keys.timers, 0, -1)  # type: ignore[assignment]
        return [m.decode() for m in found]

    def shoppers_after(self, cursor: str, limit: int) -> list[str]:
        """Up to ``limit`` known identities after ``cursor``, in byte order (the sweep)."""
        low = f"({cursor}" if cursor else "-"
        found: list[bytes] = self.client.zrangebylex(  # type: ignore[assignment]
            self.keys.shoppers, low, "+", start=0, num=limit
        )
        return [m.decode() for m in found]

    def sweep_cursors(self) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.sweep)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def recovering(self) -> bool:
        """Whether this shard re-derives states lost with Redis (an ``emitted`` set exists)."""
        return bool(self.client.exists(self.keys.emitted))

    def already_emitted(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the actions topic held when Redis was recovered."""
        if not ids:
            return set()
        found: list[int] = self.client.smismember(self.keys.emitted, list(ids))  # type: ignore[assignment]
        return {i for i, hit in zip(ids, found, strict=True) if hit}

    def outbox(self) -> dict[str, bytes]:
        """Records written with their states and not yet confirmed as acknowledged."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.outbox)  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    def acked(self) -> dict[int, int]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.acked)  # type: ignore[assignment]
        return {int(k): int(v) for k, v in raw.items()}

    def waiting(self) -> dict[str, str]:
        """User -> the anonymous id whose hand-off its held events wait for."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.keys.waiting)  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def commit(self, write: ShardWrite, now: int) -> TimerHead:
        """Write ``write`` atomically (one script call); return the head of the shard's
        timer index as it left it."""
        keys, packed = self.prepared(write, now)
        found: list[bytes] = self._commit(keys=keys, args=[packed])
        return TimerHead.parse(found)

    def prepared(self, write: ShardWrite, now: int) -> tuple[list[str], bytes]:
        """The commit script's keys and its one packed argument for ``write``."""
        keys = self.keys
        state_keys: list[str] = []
        args: list[Any] = [HEAD, now + HORIZON_MS, len(write.states)]
        for identity, data, due in write.states:
            ttl = self.ttl_ms if due is None else max(self.ttl_ms, due - now + DAY_MS)
            flag = ("n" if identity in write.new else "") + (
                "c" if identity in write.cleared else ""
            )
            state_keys.append(keys.state(identity))
            args += [identity, data, "" if due is None else due, ttl, flag]
        stored = {identity for identity, _, _ in write.states}
        new = [i for i in write.new if i not in stored]  # new without a state of their own
        args += [len(new), *new]
        args += _pairs(write.looks.items())
        args += [len(write.forgotten), *write.forgotten]
        args += _pairs(write.outbox.items())
        args += [len(write.confirmed), *write.confirmed]
        args += _pairs(write.acked.items())
        args += _pairs(write.offsets.items())
        args += _pairs(write.sweep.items())
        args += _pairs((k, v) for k, v in write.counts.items() if v)
        args += _pairs(write.waiting.items())
        args += [len(write.waited), *write.waited]
        moved_keys: list[str] = []
        args += [len(write.moved), HANDOFF_TTL_MS]
        for anon, (user, record) in write.moved.items():
            moved_keys += [keys.state(anon), keys.handoff(anon)]
            args += [anon, user, record]
        shard = [keys.timers, keys.shoppers, keys.outbox, keys.acked, keys.offsets]
        every = [*shard, keys.stats, keys.sweep, keys.links, keys.waiting, *state_keys, *moved_keys]
        every += _books(write, keys, len(every), args)
        every += _catalog(write, keys, len(every), args)
        args += [len(every) + 1, *_pairs((k, v) for k, v in write.measures.items() if v)]
        every.append(keys.measures)
        return every, _pack_args(args)

    def members(self, name: str, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One ``SSCAN`` page of the shard's members of segment ``name``: (cursor, ids)."""
        found: tuple[int, list[bytes]] = self.client.sscan(  # type: ignore[assignment]
            self.keys.segment(name), cursor, count=count
        )
        return int(found[0]), [m.decode() for m in found[1]]

    def member_count(self, name: str) -> int:
        return int(self.client.scard(self.keys.segment(name)))


def commit_together(
    stores: Sequence[ShardStore], writes: Sequence[ShardWrite], now: int
) -> list[TimerHead]:
    """Several shards' commits in one round trip: each is :meth:`ShardStore.commit`'s
    script, atomic on its own shard's slot, and they run in the order given; the heads
    in that order. The stores share one client. On a Redis Cluster the commits go in one
    pipeline per node (the node's own connection: redis-py's cluster pipelines refuse
    scripts), and a node's commits go one by one through the cluster client, which
    follows redirections, when a slot has moved."""
    if len(stores) == 1:
        return [stores[0].commit(writes[0], now)]
    client = stores[0].client
    prepared = [store.prepared(write, now) for store, write in zip(stores, writes, strict=True)]
    if not isinstance(client, RedisCluster):
        return [TimerHead.parse(reply) for reply in _pipelined(client, prepared)]
    heads: dict[int, TimerHead] = {}
    nodes: dict[str, tuple[Any, list[int]]] = {}
    for i, (keys, _) in enumerate(prepared):
        node = client.get_node_from_key(keys[0])  # type: ignore[no-untyped-call]
        nodes.setdefault(node.name, (node, []))[1].append(i)
    for node, indexes in nodes.values():
        try:
            found = _pipelined(client.get_redis_connection(node), [prepared[i] for i in indexes])
        except (AskError, TryAgainError, ClusterDownError):  # the slots moved: one by one
            found = [None] * len(indexes)
        for i, reply in zip(indexes, found, strict=True):
            heads[i] = stores[i].commit(writes[i], now) if reply is None else TimerHead.parse(reply)
    return [heads[i] for i in range(len(prepared))]


def _pipelined(client: RedisClient, prepared: list[tuple[list[str], bytes]]) -> list[Any]:
    """The commit script for each (keys, argument) in one pipeline; its replies. A script
    Redis does not have (restarted, flushed: then none ran) is loaded, and all run again."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, packed in prepared:
            pipe.evalsha(_COMMIT_SHA, len(keys), *keys, packed)
        try:
            return pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            client.script_load(_COMMIT)
    raise AssertionError("unreachable: the second attempt returns or raises")


def _books(write: ShardWrite, keys: ShardKeys, before: int, args: list[Any]) -> list[str]:
    """The segments-and-RFM section of the commit (its own keys after every other key):
    appends its arguments to ``args`` and returns its keys."""
    names = sorted({name for name, _, _ in write.members})
    where = {name: i + 2 for i, name in enumerate(names)}
    args += [before + 1, len(names)]
    args += [len(write.members)]
    for name, identity, inside in write.members:
        args += [where[name], identity, "1" if inside else ""]
    args += _pairs(write.rfm.items())
    return [keys.rfm, *(keys.segment(name) for name in names)]


def _catalog(write: ShardWrite, keys: ShardKeys, before: int, args: list[Any]) -> list[str]:
    """The catalog section of the commit (interest entries, bought-together counts),
    its keys after the segments': appends its arguments and returns its keys."""
    interest = sorted({pid for pid, _ in write.interest})
    together = sorted({pid for pid, _ in write.together})
    where = {pid: before + 1 + i for i, pid in enumerate(interest)}
    args += [len(write.interest)]
    for (pid, identity), packed in write.interest.items():
        args += [where[pid], identity, packed]
    where = {pid: before + 1 + len(interest) + i for i, pid in enumerate(together)}
    args += [len(write.together), 2 * MAX_PARTNERS, MAX_PARTNERS]
    for (pid, partner), count in write.together.items():
        args += [where[pid], partner, count]
    return [*(keys.interest(pid) for pid in interest), *(keys.together(pid) for pid in together)]


def _pack_args(args: list[Any]) -> bytes:
    """The commit's arguments as one MessagePack array, bytes as strings (Lua's cmsgpack
    reads no binary type; a Lua string holds any bytes)."""
    return _packer.encode([_as_str(a) if type(a) is bytes else a for a in args])


def _as_str(data: bytes) -> msgspec.Raw:
    size = len(data)
    if size < 32:
        head = bytes((0xA0 | size,))
    elif size < 256:
        head = bytes((0xD9, size))
    elif size < 65_536:
        head = b"\xda" + size.to_bytes(2, "big")
    else:
        head = b"\xdb" + size.to_bytes(4, "big")
    return msgspec.Raw(head + data)


def _pairs(items: Iterable[tuple[Any, Any]]) -> list[Any]:
    flat: list[Any] = []
    for key, value in items:
        flat += [key, value]
    return [len(flat) // 2, *flat]


# One shard's batch write (ShardStore.commit): every key is the shard's (one slot).
# KEYS: timers, shoppers, outbox, acked, offsets, stats, sweep, links, waiting, then one
# per state, then two per anonymous id linked now (its state, its hand-off), then the
# segments-and-RFM section's keys (see _books), the catalog's, and the measures hash.
# ARGV[1]: one MessagePack array (one argument, not thousands: redis-py packs each
# argument in Python): the head's size and horizon (TimerHead), the states (identity,
# data, due or '', ttl, flags: n = new, c = cleared), then counted sections: new-only
# identities, looks, forgotten, outbox, confirmed, acked, offsets, sweep marks,
# counters, users that wait (user, anon), users done waiting, then the linked
# anonymous ids (count, hand-off ttl, then anon, user, hand-off record): each is
# linked, its hand-off written, its state and index entries deleted; then the
# segments-and-RFM section (see _books), the catalog's (_catalog), the measures hash's
# index and its increments. It returns the head of the timer index.
_COMMIT = """
local a = 0
local args = cmsgpack.unpack(ARGV[1])
local function take() a = a + 1; return args[a] end
local timers, shoppers, outbox = KEYS[1], KEYS[2], KEYS[3]
local head, horizon = tonumber(take()), take()
local n = tonumber(take())
local nstates = n
for i = 1, n do
  local id, data, due, ttl, flag = take(), take(), take(), take(), take()
  if due ~= '' then
    redis.call('ZADD', timers, due, id)
  elseif string.find(flag, 'c', 1, true) then
    redis.call('ZREM', timers, id)
  end
  if tonumber(ttl) == 0 then
    redis.call('SET', KEYS[9 + i], data)
  else
    redis.call('SET', KEYS[9 + i], data, 'PX', ttl)
  end
  if string.find(flag, 'n', 1, true) then
    redis.call('ZADD', shoppers, 'NX', 0, id)
  end
end
n = tonumber(take())
for i = 1, n do redis.call('ZADD', shoppers, 'NX', 0, take()) end
n = tonumber(take())
for i = 1, n do
  local id, score = take(), take()
  redis.call('ZADD', timers, 'XX', score, id)
end
n = tonumber(take())
for i = 1, n do
  local id = take()
  redis.call('ZREM', timers, id)
  redis.call('ZREM', shoppers, id)
end
n = tonumber(take())
for i = 1, n do
  local id, record = take(), take()
  redis.call('HSET', outbox, id, record)
end
n = tonumber(take())
for i = 1, n do redis.call('HDEL', outbox, take()) end
for _, target in ipairs({KEYS[4], KEYS[5], KEYS[7]}) do
  n = tonumber(take())
  for i = 1, n do
    local field, value = take(), take()
    redis.call('HSET', target, field, value)
  end
end
n = tonumber(take())
for i = 1, n do
  local field, value = take(), take()
  redis.call('HINCRBY', KEYS[6], field, value)
end
n = tonumber(take())
for i = 1, n do
  local user, anon = take(), take()
  redis.call('HSET', KEYS[9], user, anon)
end
n = tonumber(take())
for i = 1, n do redis.call('HDEL', KEYS[9], take()) end
n = tonumber(take())
local handoff_ttl = take()
local moved = 9 + nstates  -- the linked anonymous ids' keys follow the states'
for i = 1, n do
  local anon, user, record = take(), take(), take()
  redis.call('HSET', KEYS[8], anon, user)
  redis.call('SET', KEYS[moved + 2 * i], record, 'PX', handoff_ttl)
  redis.call('DEL', KEYS[moved + 2 * i - 1])
  redis.call('ZREM', timers, anon)
  redis.call('ZREM', shoppers, anon)
end
-- segments and RFM: KEYS[base] is the rfm hash, KEYS[base + 1..] the segments' sets
local base = tonumber(take()) - 1
take()
n = tonumber(take())
for i = 1, n do
  local index, id, inside = tonumber(take()), take(), take()
  if inside == '1' then
    redis.call('SADD', KEYS[base + index], id)
  else
    redis.call('SREM', KEYS[base + index], id)
  end
end
n = tonumber(take())
for i = 1, n do
  local id, packed = take(), take()
  if packed == '' then
    redis.call('HDEL', KEYS[base + 1], id)
  else
    redis.call('HSET', KEYS[base + 1], id, packed)
  end
end
-- the catalog: interest entries (b'' deletes), then bought-together increments, each
-- product's hash trimmed to its most frequent partners once it passes the bound
n = tonumber(take())
for i = 1, n do
  local index, id, packed = tonumber(take()), take(), take()
  if packed == '' then
    redis.call('HDEL', KEYS[index], id)
  else
    redis.call('HSET', KEYS[index], id, packed)
  end
end
n = tonumber(take())
local bound, keep = tonumber(take()), tonumber(take())
local grown = {}
for i = 1, n do
  local index, partner, count = tonumber(take()), take(), take()
  redis.call('HINCRBY', KEYS[index], partner, count)
  grown[index] = true
end
for index, _ in pairs(grown) do
  if redis.call('HLEN', KEYS[index]) > bound then
    local flat = redis.call('HGETALL', KEYS[index])
    local rows = {}
    for i = 1, #flat, 2 do rows[#rows + 1] = {flat[i], tonumber(flat[i + 1])} end
    table.sort(rows, function(x, y)
      if x[2] ~= y[2] then return x[2] > y[2] end
      return x[1] < y[1]
    end)
    for i = keep + 1, #rows do redis.call('HDEL', KEYS[index], rows[i][1]) end
  end
end
-- journey measurement: KEYS[index] is the shard's measures hash, then its increments
local measures = tonumber(take())
n = tonumber(take())
for i = 1, n do
  local name, count = take(), take()
  redis.call('HINCRBY', KEYS[measures], name, count)
end
-- the head of the timer index: its entries due by the horizon (at most a few), then
-- the score of the entry after them ('' when there is none)
local near = redis.call('ZRANGEBYSCORE', timers, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, head)
local after = redis.call('ZRANGE', timers, #near / 2, #near / 2, 'WITHSCORES')
near[#near + 1] = after[2] or ''
return near
"""
_COMMIT_SHA = hashlib.sha1(_COMMIT.encode()).hexdigest()  # as Redis names the script


def timers_pending(client: RedisClient, keys: Keys) -> list[int]:
    """Each shard's timer index size, in shard order (one pipeline): pending steps, waits
    and quiet-hour deferrals."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.zcard(shard.timers)
    return [int(size) for size in pipe.execute()]


def read_stats(client: RedisClient, keys: Keys) -> dict[str, int]:
    """Every counter of the deployment, summed over its shards."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.hgetall(shard.stats)
    pipe.hgetall(keys.stats)
    total: Counter[str] = Counter()
    for raw in pipe.execute():
        total.update({k.decode(): int(v) for k, v in raw.items()})
    return dict(total)


def read_state(client: RedisClient, keys: Keys, identity: str) -> UserState | None:
    """One shopper's stored state (``tetik state``), or None."""
    data: bytes | None = client.get(keys.state(identity))  # type: ignore[assignment]
    return None if data is None else loads(data)


def fix_layout(client: RedisClient, keys: Keys) -> None:
    """Record the shard count at the first start; refuse a different one after."""
    client.hsetnx(keys.layout, "shards", keys.shards)
    stored: bytes | None = client.hget(keys.layout, "shards")  # type: ignore[assignment]
    if stored is not None and int(stored) != keys.shards:
        raise ConfigError(
            f"TETIK_SHARDS is {keys.shards} but this Redis holds {int(stored)} shards of "
            f"prefix {keys.prefix!r}; set TETIK_SHARDS={int(stored)} (the shard count is "
            "fixed per deployment) or use another TETIK_PREFIX"
        )


class Shoppers:
    """Reading shoppers' states and the counters from outside the pipeline.

    For ``tetik state``, the demo, ``tetik deliver`` (profile e-mail
    addresses) and the fault suite; only the pipeline writes.
    """

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def load(self, identity: str) -> UserState | None:
        return read_state(self.client, self.keys, identity)

    def stats(self) -> dict[str, int]:
        return read_stats(self.client, self.keys)
