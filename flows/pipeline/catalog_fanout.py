"""The catalog's fan-out (SPEC section 10): a product update reaches the shoppers who care.

A :class:`ProductDeriver` is the :class:`~flows.pipeline.derive.Deriver` of
``product_update`` events. Rules of this interface:

* **Taking an update** writes the catalog at once
  (:meth:`flows.stores.catalog.CatalogStore.update`): ``product()`` sees the
  new fields from the shards' next batches on. An update that neither lowers
  the price nor restocks (:func:`engine.catalog.change_of`) fans out to no one.
* **Pages** (:mod:`flows.pipeline.derive` paces them and starts them once the
  watermark has passed the update's ``ts``) walk the interest index shard by
  shard with ``HSCAN`` (the cursor is ``shard:scan-cursor``). Each listed
  shopper gets a :class:`~flows.pipeline.decode.Fanout` of the update, unless
  the entry has lapsed by the update's time (then it is pruned) or, for a
  price change alone, the price the entry saw is not above the new price.
  The shopper's shard decides the derived events from the shopper's own state
  (:func:`engine.catalog.derive`), with the product as this update made it.
* **Anonymous ids**: an entry of an anonymous id says so; the identity
  resolver sends its fan-out to the user the id is linked to, if any. A
  merged id's entries stay until its user's shard has written the user's
  own (then they are deleted), so a fan-out walking the index during a merge
  reaches the user one way or the other (twice is harmless: the derived
  events' ids are the user's). A user still waiting for the hand-off keeps
  the fan-out with its held events, and an anonymous id whose link is
  pending sends it to the user with the hand-off: either way the user's
  merged state decides.
* **Ordering**: the derived events of an update are applied at the update's
  clock, each on its shopper's shard after the events that shard had already
  taken; other shoppers' events interleave with a long fan-out (pages of
  :data:`flows.pipeline.derive.PAGE`, applied by the shards in slices of
  :data:`flows.pipeline.shard.DERIVED_SLICE`), so a fan-out to 100,000
  shoppers never stalls them. ``tetik replay`` applies the derived events at
  the update's position, so the two agree unless an interested shopper's own
  event falls between the update's time and the moment its fan-out reaches
  them (within the input's lateness, live).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from engine.catalog import Product, change_of
from engine.events import PRODUCT_UPDATE, Event
from flows.pipeline.decode import Fanout
from flows.stores.catalog import CatalogStore, anonymous_entry, unpack_interest

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Product).decode
SCAN_COUNT: Final = 500  # entries asked of one HSCAN call


class ProductDeriver:
    """The fan-out of ``product_update`` events (see the module rules)."""

    name = "catalog"

    def __init__(self, store: CatalogStore, shards: int) -> None:
        self._store = store
        self._shards = shards

    def wants(self, event: Event) -> bool:
        return event.type == PRODUCT_UPDATE

    def take(self, events: Sequence[Event]) -> list[bytes | None]:
        return [
            None if record is None or not change_of(record) else _encode(record)
            for record in self._store.update_all(events)
        ]

    def page(
        self, event: Event, data: bytes, cursor: str, limit: int
    ) -> tuple[list[Event | Fanout], str | None]:
        record = _decode(data)
        change = change_of(record)
        pid = event.product_id or ""
        shard, scan = _parse(cursor)
        out: list[Event | Fanout] = []
        while shard < self._shards and len(out) < limit:
            scan, entries = self._store.interest_page(shard, pid, scan, SCAN_COUNT)
            lapsed: dict[str, bytes] = {}
            for identity, packed in entries.items():
                interest = unpack_interest(packed)
                if interest.expires < event.ts:
                    lapsed[identity] = packed
                elif change.restocked or _may_drop(interest.price, record.price):
                    out.append(Fanout(identity, record, anonymous_entry(packed)))
            self._store.prune(shard, pid, lapsed)
            if scan == 0:
                shard, scan = shard + 1, 0
        if shard >= self._shards:
            return out, None
        return out, f"{shard}:{scan}"


def _may_drop(seen: float | None, price: float | None) -> bool:
    """Whether a shopper who saw ``seen`` may get a drop to ``price`` (None: they saw no
    price of their own; the shard compares with the price before the update)."""
    return seen is None or (price is not None and price < seen)


def _parse(cursor: str) -> tuple[int, int]:
    if not cursor:
        return 0, 0
    shard, _, scan = cursor.partition(":")
    return int(shard), int(scan)
