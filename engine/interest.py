"""Interest (SPEC section 10): which shoppers care about a product, and at what price.

Rules of this interface:

* A shopper is interested in a product while it is in their cart (the line
  counts: :func:`engine.retention.cart_kept_from`), while it is a favorite
  (likewise), or for :data:`VIEW_INTEREST_MS` (30 days) after they last viewed
  it. :func:`interest_of` answers from the shopper's own state at a moment
  ``at``, reading only records at or before ``at`` (a cart line or a favorite
  added, or last changed, after ``at`` does not count): the strongest ``via``
  (``cart``, then ``favorite``, then ``view``), the price they last saw (the
  ``price`` of their latest view, add-to-cart or add-favorite of the product
  that carried one, else None) and until when the interest lasts
  (``expires``, the latest of the three ends).
* The interest index maps each product to its interested shoppers. It is a
  superset filter: the fan-out of an update asks :func:`interest_of` again
  for each shopper it lists (:func:`engine.catalog.derive`), so an entry that
  has lapsed derives nothing. It is kept up to date by :func:`refresh` after
  each event, for the products the event touched (:func:`touched`), and at an
  identity link, where the anonymous id's entries become the user's.
* :class:`InterestIndex` is the index in memory (``tetik replay``); the live
  engine keeps the same entries in Redis, by shard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from engine.durations import DAY
from engine.events import Event
from engine.retention import cart_kept_from, favorites_kept_from, kept_from
from engine.state import UserState
from engine.windows import Stored, WindowConfig

VIEW_INTEREST_MS: Final = 30 * DAY
PRICED_TYPES: Final = ("view_product", "add_to_cart", "add_favorite")
TOUCHING: Final = frozenset(
    {"view_product", "add_to_cart", "remove_from_cart", "add_favorite", "remove_favorite"}
)


class Interest(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One shopper's interest in one product (see the module rules)."""

    via: str
    price: float | None
    expires: int


def _latest(window: list[Stored] | None, pid: str, at: int, oldest: int) -> Stored | None:
    """The latest record of ``pid`` in ``window`` with ``oldest <= ts <= at``."""
    for record in reversed(window or ()):
        if record.ts > at:
            continue
        if record.ts < oldest:
            return None
        if record.product_id == pid:
            return record
    return None


def _seen_price(state: UserState, pid: str, at: int, windows: WindowConfig) -> float | None:
    best: Stored | None = None
    for kind in PRICED_TYPES:
        oldest = kept_from(windows, kind, at)
        for record in reversed(state.windows.get(kind) or ()):
            if record.ts > at:
                continue
            if record.ts < oldest or (best is not None and record.ts <= best.ts):
                break
            if record.product_id == pid and record.price is not None:
                best = record
                break
    return None if best is None else best.price


def interest_of(state: UserState, pid: str, at: int, windows: WindowConfig) -> Interest | None:
    """The shopper's interest in ``pid`` at ``at`` (None: none); see the module rules."""
    ends: list[int] = []
    vias: list[str] = []
    line = state.cart.get(pid)
    if line is not None and cart_kept_from(windows, at) <= line.ts <= at:
        vias.append("cart")
        ends.append(line.ts + windows.cart_max_age_ms)
    favorite = state.favorites.get(pid)
    if favorite is not None and favorites_kept_from(windows, at) <= favorite <= at:
        vias.append("favorite")
        ends.append(favorite + windows.favorites_max_age_ms)
    oldest = max(at - VIEW_INTEREST_MS, kept_from(windows, "view_product", at))
    view = _latest(state.windows.get("view_product"), pid, at, oldest)
    if view is not None:
        vias.append("view")
        ends.append(view.ts + VIEW_INTEREST_MS)
    if not vias:
        return None
    return Interest(vias[0], _seen_price(state, pid, at, windows), max(ends))


def touched(event: Event, cart_before: Iterable[str]) -> set[str]:
    """The products whose interest ``event`` may change (``cart_before``: the cart's
    products before it, which a purchase without items empties)."""
    if event.type in TOUCHING:
        return {event.product_id} if event.product_id else set()
    if event.type == "purchase":
        if event.items is None:
            return set(cart_before)
        return {item.product_id for item in event.items}
    return set()


def products_of(state: UserState, now: int) -> set[str]:
    """Every product ``state`` may be interested in at ``now`` (a superset: its cart,
    its favorites and the products it viewed in the last 30 days)."""
    found = set(state.cart) | set(state.favorites)
    oldest = now - VIEW_INTEREST_MS
    for record in reversed(state.windows.get("view_product") or ()):
        if record.ts < oldest:
            break
        if record.product_id:
            found.add(record.product_id)
    return found


class InterestIndex:
    """The interest index in memory: product -> shopper -> :class:`Interest`."""

    def __init__(self) -> None:
        self.by_product: dict[str, dict[str, Interest]] = {}
        self.by_shopper: dict[str, set[str]] = {}

    def refresh(
        self, state: UserState, products: Iterable[str], now: int, windows: WindowConfig
    ) -> None:
        """Recompute the shopper's entries for ``products`` at ``now``."""
        key = state.key
        for pid in products:
            interest = interest_of(state, pid, now, windows)
            if interest is None:
                self._drop(key, pid)
            else:
                self.by_product.setdefault(pid, {})[key] = interest
                self.by_shopper.setdefault(key, set()).add(pid)

    def merge(self, anon: str, user: UserState, now: int, windows: WindowConfig) -> None:
        """An identity link: ``anon``'s entries become the user's (from the merged state)."""
        products = self.by_shopper.pop(anon, set())
        for pid in products:
            shoppers = self.by_product.get(pid)
            if shoppers is not None:
                shoppers.pop(anon, None)
        self.refresh(user, products, now, windows)

    def shoppers(self, pid: str, at: int) -> list[str]:
        """The shoppers listed for ``pid`` whose interest lasts to ``at``, sorted;
        lapsed entries are dropped."""
        entries = self.by_product.get(pid)
        if not entries:
            return []
        for key in [k for k, interest in entries.items() if interest.expires < at]:
            self._drop(key, pid)
        return sorted(entries)

    def pairs(self) -> int:
        """How many (shopper, product) entries the index holds."""
        return sum(len(entries) for entries in self.by_product.values())

    def _drop(self, key: str, pid: str) -> None:
        shoppers = self.by_product.get(pid)
        if shoppers is not None and shoppers.pop(key, None) is not None and not shoppers:
            del self.by_product[pid]
        products = self.by_shopper.get(key)
        if products is not None:
            products.discard(pid)
            if not products:
                del self.by_shopper[key]
