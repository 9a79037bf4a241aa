"""The catalog, the interest index and bought-together counts in Redis (SPEC section 10).

Rules of this interface:

* **Products**: one string per product (:meth:`flows.stores.keys.Keys.product`,
  msgpack of :class:`engine.catalog.Product`). Only the fan-out stage writes
  it (:meth:`CatalogStore.update`: read, :func:`engine.catalog.apply_update`,
  write), so no two writers race, and applying the same update again (after
  a crash) writes the same record and gives the same change.
* **Interest**: per shard and product, a hash identity -> packed
  :class:`engine.interest.Interest` (:func:`pack_interest`, about 16 bytes:
  the via's letter, the end of the interest in minutes, the price seen). The
  shard writes a shopper's entries in the commit that writes the shopper's
  state (``ShardLogic._note_catalog``), so the index never disagrees with the states
  after a crash. The fan-out reads it a page at a time per shard
  (:meth:`CatalogStore.interest_page`) and removes the entries that have
  lapsed with a compare-and-delete (an entry the shard rewrote meanwhile
  stays).
* **Bought together**: per shard and product, a hash partner -> count,
  incremented in the shard's commit (so a purchase re-read after a crash
  counts once) and trimmed to :data:`engine.bought_together.MAX_PARTNERS`
  there; :class:`RedisCatalog` adds the shards up.
* :class:`RedisCatalog` is the :class:`engine.catalog.CatalogReader` a shard
  gives the engine. It remembers what it read for one batch only
  (:meth:`RedisCatalog.begin`): a batch sees one version of a product, and a
  change of the catalog is seen from the next batch on. A shard whose rules
  read products fetches its batch's products in one round trip first
  (:meth:`RedisCatalog.prefetch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from engine.bought_together import top as top_partners
from engine.catalog import Product, apply_update
from engine.events import Event
from engine.interest import Interest
from flows.retry import RedisClient
from flows.stores.keys import Keys

_encode = msgspec.msgpack.Encoder().encode
_decode_product = msgspec.msgpack.Decoder(Product).decode
_VIA = {"cart": "c", "favorite": "f", "view": "v"}
_VIA_NAME = {code: via for via, code in _VIA.items()}
MINUTE = 60_000


def pack_interest(interest: Interest, anonymous: bool = False) -> bytes:
    """``c28512345:19.99``: via (upper case for an anonymous id), end of the interest
    (minutes), price seen (if any)."""
    end = -(-interest.expires // MINUTE)  # rounded up: never lapses early
    price = "" if interest.price is None else f":{interest.price!r}"
    via = _VIA[interest.via]
    return f"{via.upper() if anonymous else via}{end}{price}".encode()


def unpack_interest(data: bytes) -> Interest:
    text = data.decode()
    end, _, price = text[1:].partition(":")
    return Interest(_VIA_NAME[text[0].lower()], float(price) if price else None, int(end) * MINUTE)


def anonymous_entry(data: bytes) -> bool:
    """Whether a packed entry is an anonymous id's (its shard may have handed it over)."""
    return data[:1].isupper()


def forget_interest(client: RedisClient, keys: Keys, anon: str, products: Iterable[str]) -> None:
    """Delete a merged anonymous id's entries (best effort, after its user's shard wrote
    the user's own: until then a fan-out reaches the user through the anonymous id)."""
    shard = keys.of(anon)
    pipe = client.pipeline(transaction=False)
    for pid in products:
        pipe.hdel(shard.interest(pid), anon)
    pipe.execute()


def read_interest(
    client: RedisClient, keys: Keys, identity: str, products: Iterable[str]
) -> dict[str, Interest]:
    """``identity``'s entries in the interest index for ``products`` (those it has), as
    the fan-out reads them: one pipelined ``HGET`` per product on the identity's shard."""
    shard = keys.of(identity)
    wanted = sorted(products)
    pipe = client.pipeline(transaction=False)
    for pid in wanted:
        pipe.hget(shard.interest(pid), identity)
    found: list[bytes | None] = pipe.execute()
    return {pid: unpack_interest(raw) for pid, raw in zip(wanted, found, strict=True) if raw}


class CatalogStore:
    """Products and the interest index, read and written outside the shards' commits."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def product(self, product_id: str) -> Product | None:
        data: bytes | None = self.client.get(self.keys.product(product_id))  # type: ignore[assignment]
        return None if data is None else _decode_product(data)

    def update(self, event: Event) -> Product | None:
        """Apply a ``product_update`` (see the module rules); the product after it, or
        None when it was older than the stored one."""
        return self.update_all([event])[0]

    def update_all(self, events: Sequence[Event]) -> list[Product | None]:
        """:meth:`update` for many updates in order: one read and one write round trip."""
        pids = list(dict.fromkeys(event.product_id or "" for event in events))
        pipe = self.client.pipeline(transaction=False)
        for pid in pids:
            pipe.get(self.keys.product(pid))
        current = {
            pid: None if data is None else _decode_product(data)
            for pid, data in zip(pids, pipe.execute(), strict=True)
        }
        results: list[Product | None] = []
        changed: dict[str, Product] = {}
        for event in events:
            pid = event.product_id or ""
            record = apply_update(current[pid], event)
            if record is not None:
                current[pid] = changed[pid] = record
            results.append(record)
        if changed:
            pipe = self.client.pipeline(transaction=False)
            for pid, record in changed.items():
                pipe.set(self.keys.product(pid), _encode(record))
            pipe.execute()
        return results

    def interest_page(
        self, shard: int, product_id: str, cursor: int, count: int
    ) -> tuple[int, dict[str, bytes]]:
        """One ``HSCAN`` page of a shard's interest in ``product_id``: (next cursor, entries)."""
        key = self.keys.shard(shard).interest(product_id)
        found: tuple[int, dict[bytes, bytes]] = self.client.hscan(key, cursor, count=count)  # type: ignore[assignment]
        return int(found[0]), {k.decode(): v for k, v in found[1].items()}

    def prune(self, shard: int, product_id: str, lapsed: dict[str, bytes]) -> None:
        """Delete lapsed entries that still hold what the fan-out read."""
        if lapsed:
            key = self.keys.shard(shard).interest(product_id)
            args = [x for pair in lapsed.items() for x in pair]
            self._prune(keys=[key], args=args)

    @property
    def _prune(self) -> Any:
        script = getattr(self, "_prune_script", None)
        if script is None:
            script = self._prune_script = self.client.register_script(_PRUNE)
        return script

    def pairs(self) -> int:
        """How many (shopper, product) entries the interest index holds (a SCAN: tools
        and benchmarks only)."""
        total = 0
        for shard in self.keys.all_shards():
            for key in self.client.scan_iter(match=f"{shard.tag}:interest:*", count=1000):
                total += int(self.client.hlen(key))
        return total


_PRUNE = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
"""


class RedisCatalog:
    """The engine's :class:`~engine.catalog.CatalogReader` over Redis (module rules)."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._products: dict[str, Product | None] = {}
        self._together: dict[str, dict[str, int]] = {}

    def begin(self) -> None:
        """A new batch: forget what the last one read."""
        if self._products:
            self._products = {}
        if self._together:
            self._together = {}

    def prefetch(self, product_ids: Iterable[str]) -> None:
        """Read the products a batch will likely ask for in one round trip."""
        missing = [pid for pid in dict.fromkeys(product_ids) if pid not in self._products]
        if not missing:
            return
        pipe = self.client.pipeline(transaction=False)
        for pid in missing:
            pipe.get(self.keys.product(pid))
        for pid, data in zip(missing, pipe.execute(), strict=True):
            self._products[pid] = None if data is None else _decode_product(data)

    def product(self, product_id: str) -> Product | None:
        if product_id not in self._products:
            data: bytes | None = self.client.get(self.keys.product(product_id))  # type: ignore[assignment]
            self._products[product_id] = None if data is None else _decode_product(data)
        return self._products[product_id]

    def bought_together(self, product_id: str, n: int) -> list[str]:
        counts = self._together.get(product_id)
        if counts is None:
            counts = self._together[product_id] = self._read_together(product_id)
        return top_partners(counts, n)

    def at(self, when: int) -> RedisCatalog:
        """Itself: a scheduled step reads the catalog as it is when the step runs."""
        return self

    def _read_together(self, product_id: str) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for shard in self.keys.all_shards():
            pipe.hgetall(shard.together(product_id))
        total: Counter[str] = Counter()
        for raw in pipe.execute():
            total.update({k.decode(): int(v) for k, v in raw.items()})
        return dict(total)
