"""The catalog (SPEC section 10): every product's latest fields, and what an update means.

Rules of this interface:

* A ``product_update`` event updates one product (:func:`apply_update`): the
  fields it carries replace the stored ones, the fields it omits keep theirs.
  The latest update by ``ts`` wins: an update older than the stored one
  changes nothing; on equal ``ts`` the greater ``event_id`` wins, so the
  result does not depend on the order updates are read in (a repeated
  update read after a newer one of the same time changes nothing).
* A :class:`Product` remembers the update that made it (``event``) and the
  price and stock just before it (``was_price``, ``was_stock``), so the
  update's :func:`change_of` is a function of the record alone: applying the
  same update twice (a re-processed input after a crash) gives the same
  change, and the fan-out it starts derives the same events.
* An update *lowers the price* when the product had a price and the new one
  is lower; the first price seen is no drop. It *restocks* when ``stock`` goes
  from 0 to more than 0 (an unknown stock before is no restock).
* :func:`derive` decides, for one interested shopper, the derived events of an
  update from that shopper's own state as it stood at the update's ``ts``
  (:func:`engine.interest.interest_of`): ``price_drop`` when the new price is
  below the price the shopper last saw, ``back_in_stock`` on a restock. Their
  ``event_id`` is :func:`derived_id` of the update's id (and the kind) and the
  shopper, so a re-processed update derives nothing new; their ``ts`` is the
  update's; they carry ``user_id`` for an identified shopper, else ``anon_id``.
* :class:`CatalogReader` is what conditions and templates read
  (``product(ID)``, ``bought_together(ID, N)``): replay keeps an in-memory
  :class:`Catalog`; the live engine reads Redis. Reads never raise: an unknown
  product is ``None``.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, Protocol

import msgspec

from engine.bought_together import BoughtTogether
from engine.events import Event
from engine.interest import interest_of
from engine.state import UserState
from engine.windows import WindowConfig

FIELDS = ("price", "stock", "name", "url", "image", "category", "props")


class Product(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True, gc=False):
    """The latest known fields of one product, and the update that made them."""

    price: float | None = None
    stock: int | None = None
    name: str | None = None
    url: str | None = None
    image: str | None = None
    category: str | None = None
    props: dict[str, Any] | None = None
    ts: int = 0  # the update's event time
    event: str = ""  # the update's event_id
    was_price: float | None = None  # before that update
    was_stock: int | None = None

    def fields(self) -> dict[str, Any]:
        """The catalog fields that are known, as templates see them."""
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}


class Change(NamedTuple):
    """What one update did to its product."""

    price_lowered: bool
    restocked: bool

    def __bool__(self) -> bool:
        return self.price_lowered or self.restocked


def apply_update(record: Product | None, update: Event) -> Product | None:
    """The product after ``update``; None when the update is older than ``record``."""
    if record is not None:
        if record.event == update.event_id:
            return record  # the same update again: its change stands as it was
        if (update.ts, update.event_id) < (record.ts, record.event):
            return None
    base = record if record is not None else Product()
    values = {name: getattr(update, name) for name in FIELDS}
    return Product(
        **{name: base_value if (value := values[name]) is None else value
           for name, base_value in ((n, getattr(base, n)) for n in FIELDS)},
        ts=update.ts,
        event=update.event_id,
        was_price=base.price,
        was_stock=base.stock,
    )  # fmt: skip


def change_of(record: Product) -> Change:
    """What the update that made ``record`` did (see the module rules)."""
    lowered = record.was_price is not None and record.price is not None
    lowered = lowered and record.price < record.was_price  # type: ignore[operator]
    restocked = record.was_stock == 0 and record.stock is not None and record.stock > 0
    return Change(lowered, restocked)


def derived_id(source_id: str, identity: str) -> str:
    """The id of the event derived from input ``source_id`` for ``identity``."""
    digest = hashlib.blake2b(f"{source_id}\x1f{identity}".encode(), digest_size=16)
    return f"d-{digest.hexdigest()}"


def derive(update: Event, record: Product, state: UserState, windows: WindowConfig) -> list[Event]:
    """The events ``update`` (which made ``record``) derives for the shopper of ``state``."""
    change = change_of(record)
    if not change:
        return []
    pid = update.product_id or ""
    interest = interest_of(state, pid, update.ts, windows)
    if interest is None:
        return []
    seen = interest.price if interest.price is not None else record.was_price
    who: dict[str, Any] = {"user_id": state.key} if state.identified else {"anon_id": state.key}
    common = {**who, "ts": update.ts, "product_id": pid, "via": interest.via}
    if record.category is not None:
        common["category"] = record.category
    derived: list[Event] = []
    price = record.price
    if change.price_lowered and seen is not None and price is not None and price < seen:
        derived.append(
            Event(
                event_id=derived_id(f"{update.event_id}/price_drop", state.key),
                type="price_drop",
                price=price,
                old_price=seen,
                drop_pct=round((seen - price) * 100 / seen, 2),
                **common,
            )
        )
    if change.restocked:
        derived.append(
            Event(
                event_id=derived_id(f"{update.event_id}/back_in_stock", state.key),
                type="back_in_stock",
                price=price,
                **common,
            )
        )
    return derived


class CatalogReader(Protocol):
    """What ``product()`` and ``bought_together()`` read (a plug-in: memory or Redis)."""

    def product(self, product_id: str) -> Product | None:
        """The product's latest fields, or None when the catalog has never seen it."""
        ...

    def bought_together(self, product_id: str, n: int) -> list[str]:
        """Up to ``n`` product ids most often bought with ``product_id`` (ties by id)."""
        ...

    def at(self, when: int) -> CatalogReader:
        """The catalog as a step scheduled at ``when`` (a timer, an instant) reads it.

        Live, the step runs as the watermark passes ``when`` and reads the
        catalog as it is then: the reader itself. Replay runs such steps
        lazily, at the shopper's next event, and reads the bought-together
        counts as they stood at ``when`` (:class:`Catalog`).
        """
        ...


class Catalog:
    """The catalog in memory (``tetik replay``): products and bought-together counts.

    With ``history``, :meth:`at` reads the bought-together counts as they stood
    at a time (:class:`engine.bought_together.BoughtTogether`); the products
    are read as they are (replay fires timers before a ``product_update``).
    """

    def __init__(self, *, history: bool = False) -> None:
        self.products: dict[str, Product] = {}
        self.together = BoughtTogether(history=history)

    def update(self, event: Event) -> Product | None:
        """Apply a ``product_update``; the product after it (None: it was stale, or the
        latest update seen again, which changes nothing the second time)."""
        pid = event.product_id or ""
        before = self.products.get(pid)
        if before is not None and before.event == event.event_id:
            return None
        record = apply_update(before, event)
        if record is not None:
            self.products[pid] = record
        return record

    def product(self, product_id: str) -> Product | None:
        return self.products.get(product_id)

    def bought_together(self, product_id: str, n: int) -> list[str]:
        return self.together.top(product_id, n)

    def at(self, when: int) -> CatalogReader:
        return self if self.together.history is None else _CatalogAt(self, when)


class _CatalogAt:
    """:class:`Catalog` as a step scheduled at ``when`` reads it."""

    def __init__(self, catalog: Catalog, when: int) -> None:
        self.catalog = catalog
        self.when = when

    def product(self, product_id: str) -> Product | None:
        return self.catalog.product(product_id)

    def bought_together(self, product_id: str, n: int) -> list[str]:
        return self.catalog.together.top(product_id, n, before=self.when)

    def at(self, when: int) -> CatalogReader:
        return self.catalog.at(when)
