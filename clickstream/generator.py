"""Deterministic synthetic storefront clickstream (events as in SPEC section 1).

Same config and seed give the same events, byte for byte. Only the stdlib
``random.Random`` is used (one instance per stream); ``orjson`` encodes records.

Model
-----
A fixed population of ``users`` people, each with a device ``anon_id`` and a
``user_id``; most are registered before the run starts. People have
heavy-tailed activity (log-normal weights). Sessions arrive as a Poisson process
over ``span_ms``; a session is a run of product and category views (product
popularity is Zipf-Mandelbrot, s = 1.1, q = 15; half the views stay in the
session's category), searches, favorites, cart adds/removes and purchases (of
what is in that identity's cart, which persists across sessions, so carts are
also abandoned).
``anon_ratio`` of sessions start logged out: unregistered visitors sometimes
sign up (``signup``, ``login``, ``profile``, ``consent``) and continue with
their ``user_id``; registered ones sometimes log in. A registered person's first
session in the run often carries ``profile`` and ``consent``. Sessions now and
then start with an ``engagement`` (feedback on a message) or contain a custom
event (``spin_wheel``, ``coupon_copied``). Gaps between events of a session are
log-normal (median 40 s). About 5% of ``ts`` values are RFC 3339 strings with an
offset, the rest epoch milliseconds.

Calibration
-----------
Measured on the two samples in ``/work/shared/datasets`` (read in place, not
copied): Taobao UserBehavior (84,474 rows, 815 users, ~9 days of their full
histories; sessions split at 30 min of inactivity) and REES46 Oct 2019 (9,999
rows, 2,867 users, the first 2.6 hours of the month; its own ``user_session``).
Generator figures are for the default config (seed 42: 10,000 events, 1,000
users, 1 hour). Mix shares are over the four kinds the datasets have.

==========================  ===========  ==============  =========================
figure                      Taobao       REES46          generator (default)
==========================  ===========  ==============  =========================
view (product/cat/search)   89.8%        97.9%           90.5% (seeds 1-5: 90.3-90.7)
cart add                    5.3%         1.0%            5.3%  (5.0-5.3)
favorite add                2.8%         --              2.6%  (2.5-2.8)
purchase                    2.1% [1]     1.2%            1.6%  (1.6-1.8)
events / user, median       78           2               6   [2]
events / user, mean         103.7        3.5             8.2 [2]
events / session, median    3            2               3   [3]
events / session, mean      6.0          3.1             4.2 [3]
gap in session, median      54 s         32 s            45 s (38 s) [3]
gap in session, p90         337 s        108 s           337 s (169 s) [3]
purchasers / users          68.6%        3.8%            11.4%
price, median (p10..p90)    --           159 (30..747)   180 (42..563)
top product, share of views --           1.2%            1.5% (Zipf-Mandelbrot q=15)
==========================  ===========  ==============  =========================

Other kinds (``remove_*``, ``signup``, ``login``, ``profile``, ``consent``,
``engagement``, custom) come on top: 4.8% of all events at the default config.
Carts persist, so deeper histories buy more: at Taobao's depth (100,000 events,
1,000 users, 10 hours) the mix is 89.3 / 5.4 / 2.8 / 2.6% and other kinds 3.1%.

[1] Taobao logs one ``buy`` row per item; a ``purchase`` here is one order.
[2] Per identity key (1,222, of which 500 anonymous device ids); the mean is
    about ``events / users`` by construction. Median/mean 0.73 (Taobao 0.75,
    REES46 0.57).
[3] Sessions as generated; the gap in brackets too (it includes the 0 s gaps of
    signup/login/profile/consent bundles). Outside brackets: split at 30 min of
    inactivity like Taobao, which merges a person's sessions within the hour.

Catalog updates
---------------
Off by default (the output above is unchanged). With ``catalog_updates`` the
stream also carries the catalog's feed (SPEC section 10), drawn from a random
stream of its own: at ``start_ms`` one ``product_update`` per product (by id:
``price``, ``stock`` (5..200), ``name``, ``category``, ``url``), then
``catalog_changes_per_hour`` changes of products drawn by popularity (the
views' Zipf): 45% price drops (5..40% off), 30% rises (5..25%), 25% stock-outs
(``stock`` 0, back with 5..100 units after an exponential 20 min on average,
at least 1 min). An update carries only what it changes; ids are
``cat-SEED-N``. Shoppers see the catalog: their product events and purchase
lines carry the price in force at their ``ts`` (an update at the same ``ts``
comes first), and nobody carts a product while it is out of stock (they view
it instead). Updates come on top of ``events``, which still counts shoppers'
events only.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

Event = dict[str, Any]

# Behaviour constants (calibrated, see the module docstring).
ZIPF_S = 1.1
ZIPF_Q = 15.0  # Zipf-Mandelbrot offset: top product ~1.5% of views (REES46: 1.2%)
CATEGORY_ZIPF_S = 0.8
ACTIVITY_SIGMA = 0.8  # log-normal spread of per-person activity
GAP_MEDIAN_S = 40.0
GAP_SIGMA = 1.1
GAP_MIN_MS = 1_000
GAP_MAX_MS = 25 * 60_000
SESSION_END = 0.24  # chance that a session ends after each event
END_AFTER_PURCHASE = 0.6
IN_CATEGORY_VIEW = 0.5
EVENTS_PER_SESSION = 4.2  # measured; sets the arrival rate
MEAN_SESSION_MS = 230_000  # measured
MAX_BUSY_SHARE = 0.5  # arrivals slow down rather than keep more people than this busy
PRICE_MEDIAN = 140.0
REGISTERED_SHARE = 0.9
SIGNUP_PER_STEP = 0.06
LOGIN_PER_STEP = 0.03
FIRST_SEEN_PROFILE = 0.2
FIRST_SEEN_CONSENT = 0.15
PROFILE_UPDATE = 0.01
CONSENT_CHANGE = 0.01
ENGAGEMENT_OPENER = 0.04
TS_STRING_SHARE = 0.05
# Catalog updates (GeneratorConfig.catalog_updates; see "Catalog updates" above).
CATALOG_CHANGES: tuple[tuple[str, float], ...] = (
    ("price_drop", 0.45),
    ("price_rise", 0.3),
    ("stock_out", 0.25),
)
DROP_PCT = (5, 40)  # a price drop takes this much off (uniform, whole percent)
RISE_PCT = (5, 25)
PRICE_FLOOR = 0.5
INITIAL_STOCK = (5, 200)
RESTOCK_UNITS = (5, 100)
RESTOCK_MEAN_MS = 20 * 60_000  # a stock-out lasts this long on average (exponential)
RESTOCK_MIN_MS = 60_000
SHOP_URL = "https://shop.example/p/"

# Next action within a session (weights; ones whose precondition fails view a product).
ACTIONS: tuple[tuple[str, float], ...] = (
    ("view_product", 0.815),
    ("view_category", 0.025),
    ("search", 0.025),
    ("add_to_cart", 0.082),
    ("add_favorite", 0.045),
    ("remove_from_cart", 0.02),
    ("remove_favorite", 0.006),
    ("purchase", 0.085),
    ("spin_wheel", 0.0015),
    ("coupon_copied", 0.0005),
)
ENTRY_ACTIONS: tuple[tuple[str, float], ...] = (
    ("view_product", 0.8),
    ("view_category", 0.1),
    ("search", 0.1),
)

CHANNELS = ("email", "sms", "push", "whatsapp", "onsite")
CONSENT_GRANTED = {"email": 0.85, "sms": 0.5, "push": 0.6, "whatsapp": 0.45, "onsite": 0.9}
ENGAGEMENT_KINDS: tuple[tuple[str, float], ...] = (
    ("delivered", 0.35),
    ("opened", 0.3),
    ("clicked", 0.25),
    ("bounced", 0.05),
    ("unsubscribed", 0.05),
)
TIMEZONES: tuple[tuple[str, str, float], ...] = (  # zone, phone prefix, share
    ("Europe/Istanbul", "+905", 0.4),
    ("Europe/Berlin", "+4915", 0.2),
    ("America/New_York", "+1212", 0.15),
    ("Asia/Tokyo", "+8190", 0.1),
    ("UTC", "+447", 0.1),
    ("Europe/London", "+447", 0.05),
)
TS_OFFSETS_MIN = (180, 60, -300, 540, 0, 330)
FIRST_NAMES = (
    "Ayse", "Mehmet", "Elif", "Can", "Zeynep", "Emre", "Deniz", "Selin", "Burak", "Ece",
    "Anna", "Lukas", "Emma", "Liam", "Olivia", "Noah", "Yuki", "Haruto", "Sofia", "Leon",
)  # fmt: skip
BRANDS = (
    "acme", "nova", "zenit", "orbit", "lumen", "kuzey", "atlas", "pera", "mavi", "delta",
)  # fmt: skip
CATEGORY_TREE: dict[str, tuple[str, ...]] = {
    "electronics": ("smartphone", "headphones", "tablet", "camera", "tv", "smartwatch"),
    "computers": ("notebook", "desktop", "monitor", "keyboard", "mouse"),
    "appliances": ("kitchen", "vacuum", "washer", "coffee", "iron"),
    "apparel": ("dress", "shirt", "jeans", "jacket", "tshirt", "skirt"),
    "shoes": ("running", "sneakers", "boots", "sandals", "heels"),
    "furniture": ("sofa", "chair", "table", "bed", "shelf"),
    "beauty": ("skincare", "makeup", "fragrance", "haircare"),
    "sport": ("fitness", "cycling", "camping", "yoga"),
    "kids": ("toys", "clothing", "stroller", "school"),
    "home": ("kitchenware", "bedding", "decor", "lighting", "bath"),
    "auto": ("accessories", "tires", "tools"),
    "books": ("fiction", "children", "business", "comics"),
    "accessories": ("bags", "watches", "jewelry", "sunglasses"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Same config, same output."""

    users: int = 1000
    events: int = 10_000  # exactly this many events (records for generate_records)
    seed: int = 42
    start_ms: int = 1_700_000_000_000  # event time of the first session
    # Sessions arrive over this event-time span (stretched when there are too
    # few users for that many sessions: at most about half are busy at once).
    span_ms: int = 3_600_000
    products: int = 5_000
    categories: int = 60
    invalid_ratio: float = 0.0  # share of malformed records (generate_records only)
    anon_ratio: float = 0.3  # share of sessions that start logged out (anon_id only)
    # Catalog updates (SPEC section 10; see "Catalog updates" above): off, the
    # output is what it always was.
    catalog_updates: bool = False
    catalog_changes_per_hour: float = 120.0  # price drops/rises and stock-outs, event time
    # Profiles' time zones: (zone, phone prefix, share); tetik demo --at picks its own.
    timezones: tuple[tuple[str, str, float], ...] = ()  # empty: TIMEZONES

    def __post_init__(self) -> None:
        if min(self.users, self.products, self.categories) < 1:
            raise ValueError("users, products and categories must be at least 1")
        if self.events < 0 or self.span_ms < 0:
            raise ValueError("events and span_ms must not be negative")
        for name in ("invalid_ratio", "anon_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if not 0.0 <= self.catalog_changes_per_hour < math.inf:
            raise ValueError("catalog_changes_per_hour must be a number >= 0")


@dataclass(frozen=True, slots=True)
class Product:
    """A catalog entry; ``fields`` are its product fields for events."""

    product_id: str
    category: str
    price: float
    fields: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        fields = {"product_id": self.product_id, "category": self.category, "price": self.price}
        object.__setattr__(self, "fields", fields)  # the event fields, built once


@dataclass(slots=True)
class _Person:
    user_id: str
    anon_id: str
    registered: bool
    busy_until: int = 0
    seen: bool = False
    profile: dict[str, Any] | None = None
    # Cart and favorites per identity key ({user_id: ..., anon_id: ...}), as
    # the engine sees them: logging in does not merge the device's cart.
    carts: dict[str, dict[str, tuple[Product, int]]] = field(default_factory=dict)
    favorites: dict[str, dict[str, Product]] = field(default_factory=dict)


class _Weighted:
    """Weighted choice over a fixed list in O(log n) (cumulative weights + bisect)."""

    __slots__ = ("_cum", "_items", "_total")

    def __init__(self, items: list[Any], weights: list[float]) -> None:
        self._items = items
        self._cum = list(itertools.accumulate(weights))
        self._total = self._cum[-1]
        self._cum[-1] = math.inf  # float rounding can never index past the end

    def pick(self, rng: random.Random) -> Any:
        return self._items[bisect.bisect_right(self._cum, rng.random() * self._total)]


def _table(pairs: tuple[tuple[str, float], ...]) -> _Weighted:
    return _Weighted([name for name, _ in pairs], [weight for _, weight in pairs])


def _zipf(n: int, s: float, q: float = 0.0) -> list[float]:
    return [1.0 / ((rank + q) ** s) for rank in range(1, n + 1)]


def _category_paths(count: int) -> list[str]:
    base = [f"{top}/{sub}" for top, subs in CATEGORY_TREE.items() for sub in subs]
    return [
        base[i % len(base)] if i < len(base) else f"{base[i % len(base)]}-{i // len(base) + 1}"
        for i in range(count)
    ]


class _Catalog:
    """Products with Zipf popularity, grouped by category."""

    def __init__(self, cfg: GeneratorConfig, rng: random.Random) -> None:
        self.categories = _category_paths(cfg.categories)
        rng.shuffle(self.categories)  # category popularity rank, random per seed
        cat_pick = _Weighted(self.categories, _zipf(len(self.categories), CATEGORY_ZIPF_S))
        level = {c: PRICE_MEDIAN * rng.lognormvariate(0.0, 0.7) for c in self.categories}
        ids = [f"p{i:06d}" for i in range(1, cfg.products + 1)]
        rng.shuffle(ids)  # popularity rank is independent of the id
        self.products: list[Product] = []
        for pid in ids:
            cat = cat_pick.pick(rng)
            price = max(0.5, round(level[cat] * rng.lognormvariate(0.0, 0.8), 2))
            self.products.append(Product(pid, cat, price))
        weights = _zipf(cfg.products, ZIPF_S, ZIPF_Q)
        self.popular = _Weighted(self.products, weights)
        self.by_category = self._group(weights)
        self.used_categories = list(self.by_category)

    def _group(self, weights: list[float]) -> dict[str, _Weighted]:
        members: dict[str, tuple[list[Product], list[float]]] = {}
        for product, weight in zip(self.products, weights, strict=True):
            items, ws = members.setdefault(product.category, ([], []))
            items.append(product)
            ws.append(weight)
        return {cat: _Weighted(items, ws) for cat, (items, ws) in members.items()}


class _CatalogBook:
    """The catalog's price and stock over event time, and its ``product_update`` events.

    It draws from its own random stream and advances in event-time order only
    (:meth:`extend_to`), so what it holds at a time does not depend on when
    or how often it is asked, and the shoppers' random stream is untouched.
    """

    def __init__(self, cfg: GeneratorConfig, catalog: _Catalog) -> None:
        self.rng = random.Random(cfg.seed * 7_919 + 17)
        self.catalog = catalog
        self.changes = _table(CATALOG_CHANGES)
        self.prefix = f"cat-{cfg.seed}-"
        self.count = 0
        rate = cfg.catalog_changes_per_hour
        self.gap_mean = 3_600_000.0 / rate if rate > 0 else math.inf
        # Per product: its (ts, price, stock) after each update, in ts order.
        self.history: dict[str, list[tuple[int, float, int]]] = {}
        self.out: deque[Event] = deque()  # updates not yet in the stream, in ts order
        self.queue: list[tuple[int, int, str, str]] = []  # (ts, seq, "change"|"restock", pid)
        self.seq = itertools.count()
        for product in sorted(catalog.products, key=lambda p: p.product_id):
            self.opening(product, cfg.start_ms)
        self.schedule_change(cfg.start_ms)

    def opening(self, product: Product, ts: int) -> None:
        leaf = product.category.rsplit("/", 1)[-1].split("-", 1)[0]
        name = f"{self.rng.choice(BRANDS).title()} {leaf} {self.rng.randint(100, 999)}"
        fields = {
            "price": product.price,
            "stock": self.rng.randint(*INITIAL_STOCK),
            "name": name,
            "category": product.category,
            "url": SHOP_URL + product.product_id,
        }
        self.record(product.product_id, ts, fields)

    def record(self, pid: str, ts: int, fields: dict[str, Any]) -> None:
        """Apply an update and queue its event."""
        history = self.history.setdefault(pid, [])
        _, price, stock = history[-1] if history else (ts, 0.0, 0)
        history.append((ts, fields.get("price", price), fields.get("stock", stock)))
        event_id = f"{self.prefix}{self.count}"
        self.count += 1
        self.out.append(
            {"event_id": event_id, "type": "product_update", "ts": ts, "product_id": pid, **fields}
        )

    def schedule_change(self, after: int) -> None:
        if self.gap_mean < math.inf:
            gap = max(1, int(self.rng.expovariate(1.0 / self.gap_mean)))
            heapq.heappush(self.queue, (after + gap, next(self.seq), "change", ""))

    def extend_to(self, t: int) -> None:
        """Apply every change and restock due at or before ``t``."""
        while self.queue and self.queue[0][0] <= t:
            ts, _, kind, pid = heapq.heappop(self.queue)
            if kind == "restock":
                self.record(pid, ts, {"stock": self.rng.randint(*RESTOCK_UNITS)})
            else:
                self.change(ts)
                self.schedule_change(ts)

    def change(self, ts: int) -> None:
        """One change of a product drawn by popularity: a drop, a rise or a stock-out."""
        product: Product = self.catalog.popular.pick(self.rng)
        pid = product.product_id
        kind = self.changes.pick(self.rng)
        _, price, stock = self.history[pid][-1]
        if kind == "stock_out" and stock > 0:
            self.record(pid, ts, {"stock": 0})
            back = max(RESTOCK_MIN_MS, int(self.rng.expovariate(1.0 / RESTOCK_MEAN_MS)))
            heapq.heappush(self.queue, (ts + back, next(self.seq), "restock", pid))
            return
        if kind == "price_rise":
            new = round(price * (1 + self.rng.randint(*RISE_PCT) / 100), 2)
        else:  # a drop, also instead of a stock-out of what is out of stock already
            new = max(PRICE_FLOOR, round(price * (1 - self.rng.randint(*DROP_PCT) / 100), 2))
        if new != price:
            self.record(pid, ts, {"price": new})

    def state_at(self, pid: str, t: int) -> tuple[int, float, int]:
        self.extend_to(t)
        history = self.history[pid]
        return history[max(0, bisect.bisect_right(history, t, key=lambda r: r[0]) - 1)]

    def price_at(self, pid: str, t: int) -> float:
        return self.state_at(pid, t)[1]

    def in_stock(self, pid: str, t: int) -> bool:
        return self.state_at(pid, t)[2] > 0

    def due(self, t: int) -> Iterator[Event]:
        """The updates at or before ``t`` not yet in the stream, in ts order."""
        self.extend_to(t)
        while self.out and self.out[0]["ts"] <= t:
            yield self.out.popleft()


def _line(fields: dict[str, Any], quantity: int) -> dict[str, Any]:
    return {**fields, "quantity": quantity}


class _Session:
    """One visit of one person: builds its events (epoch-ms ts) eagerly."""

    def __init__(self, sim: _Simulator, person: _Person, start: int, anon: bool) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.person = person
        self.t = start
        self.anon = anon
        self.ident: dict[str, str] = (
            {"anon_id": person.anon_id} if anon else {"user_id": person.user_id}
        )
        self.current: Product | None = None
        self.interest: str | None = None
        self.events: list[Event] = []

    def emit(self, type_: str, fields: dict[str, Any] | None = None) -> None:
        event: Event = {"event_id": "", "type": type_, "ts": self.t, **self.ident}
        if fields:
            event.update(fields)
        self.events.append(event)

    def tick(self) -> None:
        gap = int(1000.0 * math.exp(self.rng.gauss(self.sim.gap_mu, GAP_SIGMA)))
        self.t += min(GAP_MAX_MS, max(GAP_MIN_MS, gap))

    def run(self) -> list[Event]:
        self.opening()
        self.act(self.sim.entry_actions.pick(self.rng))
        end = SESSION_END
        while self.rng.random() >= end:
            self.tick()
            if self.anon:
                self.maybe_identify()
            action = self.sim.actions.pick(self.rng)
            end = END_AFTER_PURCHASE if self.act(action) == "purchase" else SESSION_END
        self.person.busy_until = self.t
        return self.events

    def opening(self) -> None:
        person, rng = self.person, self.rng
        if not self.anon and rng.random() < ENGAGEMENT_OPENER:
            self.engagement()
        first = not person.seen
        person.seen = True
        if self.anon:
            return
        if rng.random() < (FIRST_SEEN_PROFILE if first else PROFILE_UPDATE):
            self.profile()
        if rng.random() < (FIRST_SEEN_CONSENT if first else CONSENT_CHANGE):
            self.consents(rng.randint(1, 2))

    def maybe_identify(self) -> None:
        person = self.person
        if person.registered and self.rng.random() < LOGIN_PER_STEP:
            self.identify("login")
        elif not person.registered and self.rng.random() < SIGNUP_PER_STEP:
            person.registered = True
            self.identify("signup")
            self.identify("login")
            self.profile()
            self.consents(self.rng.randint(1, 3))

    def identify(self, type_: str) -> None:
        self.ident = {"user_id": self.person.user_id, "anon_id": self.person.anon_id}
        self.emit(type_)
        self.ident = {"user_id": self.person.user_id}
        self.anon = False

    def act(self, action: str) -> str:
        handler = _HANDLERS.get(action)
        if handler is None:
            self.custom(action)
        elif not handler(self):
            self.view_product()
            return "view_product"
        return action

    def key(self) -> str:
        return self.person.anon_id if self.anon else self.person.user_id

    def cart(self) -> dict[str, tuple[Product, int]]:
        return self.person.carts.setdefault(self.key(), {})

    def favorites(self) -> dict[str, Product]:
        return self.person.favorites.setdefault(self.key(), {})

    # --- actions: each returns False when its precondition does not hold ---

    def do_view_product(self) -> bool:
        self.view_product()
        return True

    def view_product(self) -> None:
        rng, catalog = self.rng, self.sim.catalog
        if self.interest is not None and rng.random() < IN_CATEGORY_VIEW:
            product: Product = catalog.by_category[self.interest].pick(rng)
        else:
            product = catalog.popular.pick(rng)
        self.current = product
        self.interest = product.category
        self.emit("view_product", self.sim.fields(product, self.t))

    def do_view_category(self) -> bool:
        self.interest = self.sim.catalog.popular.pick(self.rng).category
        self.emit("view_category", {"category": self.interest})
        return True

    def do_search(self) -> bool:
        self.interest = self.sim.catalog.popular.pick(self.rng).category
        self.emit("search", {"query": self.query(self.interest)})
        return True

    def query(self, category: str) -> str:
        leaf = category.rsplit("/", 1)[-1].split("-", 1)[0]
        roll = self.rng.random()
        if roll < 0.6:
            return leaf
        brand = self.rng.choice(BRANDS)
        return brand if roll < 0.75 else f"{brand} {leaf}"

    def do_add_to_cart(self) -> bool:
        product = self.current
        if product is None or not self.sim.in_stock(product, self.t):
            return False
        qty = 1 if self.rng.random() < 0.8 else (2 if self.rng.random() < 0.75 else 3)
        cart = self.cart()
        held = cart[product.product_id][1] if product.product_id in cart else 0
        cart[product.product_id] = (product, held + qty)
        self.emit("add_to_cart", {**self.sim.fields(product, self.t), "quantity": qty})
        return True

    def do_remove_from_cart(self) -> bool:
        cart = self.cart()
        if not cart:
            return False
        product, _ = cart.pop(self.rng.choice(list(cart)))
        self.emit("remove_from_cart", self.sim.fields(product, self.t))
        return True

    def do_add_favorite(self) -> bool:
        product = self.current
        favorites = self.favorites()
        if product is None or product.product_id in favorites:
            return False
        favorites[product.product_id] = product
        self.emit("add_favorite", self.sim.fields(product, self.t))
        return True

    def do_remove_favorite(self) -> bool:
        favorites = self.favorites()
        if not favorites:
            return False
        product = favorites.pop(self.rng.choice(list(favorites)))
        self.emit("remove_favorite", self.sim.fields(product, self.t))
        return True

    def do_purchase(self) -> bool:
        cart = self.cart()
        if cart:
            lines = list(cart.values())
            if len(lines) > 1 and self.rng.random() < 0.2:
                lines = self.rng.sample(lines, self.rng.randint(1, len(lines) - 1))
        elif self.current is not None and self.rng.random() < 0.1:
            lines = [(self.current, 1)]  # buy-now without the cart
        else:
            return False
        for product, _ in lines:
            cart.pop(product.product_id, None)
        self.emit("purchase", self.sim.order(lines, self.t))
        return True

    # --- other event kinds ---

    def custom(self, type_: str) -> None:
        rng = self.rng
        if type_ == "spin_wheel":
            prize = rng.choice(("none", "5off", "10off", "free_shipping"))
            self.emit(type_, {"props": {"prize": prize, "wheel": "w1"}})
        else:
            self.emit(type_, {"props": {"code": rng.choice(("BF10", "WELCOME5", "CART20"))}})

    def engagement(self) -> None:
        rng = self.rng
        fields = {
            "action_id": f"act-{rng.getrandbits(64):016x}",
            "channel": rng.choice(CHANNELS),
            "kind": self.sim.engagement_kinds.pick(rng),
        }
        self.emit("engagement", fields)

    def profile(self) -> None:
        person = self.person
        if person.profile is None:
            person.profile = self.sim.new_profile(person)
        self.emit("profile", {"attributes": dict(person.profile)})

    def consents(self, count: int) -> None:
        for channel in self.rng.sample(CHANNELS, count):
            granted = self.rng.random() < CONSENT_GRANTED[channel]
            self.emit("consent", {"channel": channel, "granted": granted})


_HANDLERS: dict[str, Callable[[_Session], bool]] = {
    name[3:]: method for name, method in vars(_Session).items() if name.startswith("do_")
}


class _Simulator:
    """Population, catalog and the session arrival process for one config."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        self.rng = rng = random.Random(cfg.seed)
        self.catalog = _Catalog(cfg, rng)
        self.people = [self._person(i) for i in range(1, cfg.users + 1)]
        activity = [rng.lognormvariate(0.0, ACTIVITY_SIGMA) for _ in self.people]
        self.chooser = _Weighted(self.people, activity)
        self.actions = _table(ACTIONS)
        self.entry_actions = _table(ENTRY_ACTIONS)
        self.engagement_kinds = _table(ENGAGEMENT_KINDS)
        zones = cfg.timezones or TIMEZONES
        self.zones = _Weighted(list(zones), [share for *_, share in zones])
        self.gap_mu = math.log(GAP_MEDIAN_S)
        self.book = _CatalogBook(cfg, self.catalog) if cfg.catalog_updates else None
        sessions = max(1.0, cfg.events / EVENTS_PER_SESSION)
        # A small population cannot fill a short span: stretch the span instead.
        floor = MEAN_SESSION_MS / (MAX_BUSY_SHARE * cfg.users)
        self.arrival_mean = max(cfg.span_ms / sessions, floor)
        self.orders = 0

    def fields(self, product: Product, t: int) -> dict[str, Any]:
        """The product's event fields at ``t``: its price is the catalog's then."""
        if self.book is None:
            return product.fields
        return {**product.fields, "price": self.book.price_at(product.product_id, t)}

    def in_stock(self, product: Product, t: int) -> bool:
        """Whether the product can be carted at ``t`` (always, without catalog updates)."""
        return self.book is None or self.book.in_stock(product.product_id, t)

    def _person(self, index: int) -> _Person:
        anon_id = f"a-{self.rng.getrandbits(48):012x}"
        return _Person(f"u{index:05d}", anon_id, self.rng.random() < REGISTERED_SHARE)

    def new_profile(self, person: _Person) -> dict[str, Any]:
        rng = self.rng
        zone, phone_prefix, _ = self.zones.pick(rng)
        first = rng.choice(FIRST_NAMES)
        month = rng.randint(1, 12)
        day = rng.randint(1, 28)
        return {
            "email": f"{first.lower()}.{person.user_id}@example.com",
            "phone": f"{phone_prefix}{rng.randrange(10**8, 10**9)}",
            "timezone": zone,
            "first_name": first,
            "birthday": f"{month:02d}-{day:02d}",
        }

    def order(self, lines: list[tuple[Product, int]], t: int) -> dict[str, Any]:
        self.orders += 1
        items = [_line(self.fields(product, t), qty) for product, qty in lines]
        revenue = round(sum(item["price"] * item["quantity"] for item in items), 2)
        return {"order_id": f"o-{self.cfg.seed}-{self.orders}", "revenue": revenue, "items": items}

    def session(self, start: int) -> list[Event]:
        anon = self.rng.random() < self.cfg.anon_ratio
        person = self.pick_person(start, registered=not anon)
        start = max(start, person.busy_until + GAP_MIN_MS)
        # Unregistered people browse anonymously until they sign up.
        return _Session(self, person, start, anon or not person.registered).run()

    def pick_person(self, start: int, registered: bool) -> _Person:
        """A weighted draw; redrawn a few times to avoid overlap and, for a
        logged-in session, to find a registered person."""
        person: _Person = self.chooser.pick(self.rng)
        for _ in range(4):
            if person.busy_until < start and (person.registered or not registered):
                break
            person = self.chooser.pick(self.rng)
        return person

    def next_arrival(self, now: float) -> float:
        return now + self.rng.expovariate(1.0 / self.arrival_mean)

    def run(self) -> Iterator[Event]:
        """Merge sessions (each sorted) by ts; sessions start in arrival order."""
        pending: list[tuple[int, int, Event]] = []
        seq = itertools.count()
        arrival = float(self.cfg.start_ms)
        prefix = f"ev-{self.cfg.seed}-"
        for n in range(self.cfg.events):
            while not pending or pending[0][0] > arrival:
                for event in self.session(int(arrival)):
                    heapq.heappush(pending, (event["ts"], next(seq), event))
                arrival = self.next_arrival(arrival)
            event = heapq.heappop(pending)[2]
            if self.book is not None:
                yield from self.book.due(event["ts"])  # the catalog's updates up to now
            event["event_id"] = f"{prefix}{n}"
            if self.rng.random() < TS_STRING_SHARE:
                event["ts"] = rfc3339(event["ts"], self.rng.choice(TS_OFFSETS_MIN))
            yield event


def expected_span_ms(cfg: GeneratorConfig) -> int:
    """About how much event time the shoppers' sessions of ``cfg`` take: ``span_ms``,
    or longer when there are too few users for that many sessions."""
    sessions = max(1.0, cfg.events / EVENTS_PER_SESSION)
    floor = MEAN_SESSION_MS / (MAX_BUSY_SHARE * cfg.users)
    return int(max(cfg.span_ms, sessions * floor))


def parse_start(text: str, now_ms: int) -> int:
    """``now`` or an ISO 8601 date or date-time (UTC unless it has an offset) as epoch
    ms; raise ValueError saying what is accepted."""
    if text.strip().lower() == "now":
        return now_ms
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--start {text!r} is not a date-time; write now, 2024-05-06 or "
            "2024-05-06T12:00:00+03:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int((moment - _EPOCH).total_seconds() * 1000)


def starting(cfg: GeneratorConfig, start: str | None, now_ms: int) -> GeneratorConfig:
    """``cfg`` starting at ``start`` (see :func:`parse_start`); without one, an expected
    span before ``now_ms``, so the log ends about now and a live engine takes it as
    fresh (its waits due by now fire at once, none of it is in the future)."""
    first = parse_start(start, now_ms) if start else now_ms - expected_span_ms(cfg)
    return replace(cfg, start_ms=first)


def rfc3339(ms: int, offset_min: int) -> str:
    """Epoch ms as RFC 3339 with a numeric offset (``Z`` for UTC)."""
    moment = (_EPOCH + timedelta(milliseconds=ms)).astimezone(
        timezone(timedelta(minutes=offset_min))
    )
    text = moment.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if offset_min == 0 else text


def generate(cfg: GeneratorConfig) -> Iterator[Event]:
    """Exactly ``cfg.events`` valid shopper events, ordered by ts, as JSON-ready dicts;
    with ``catalog_updates``, the catalog's ``product_update`` events up to the last
    of them come on top, each before the shopper events of its ts or later."""
    return _Simulator(cfg).run()


def identity_key(event: Event) -> str:
    """The SPEC identity key: ``user_id`` if present, else ``anon_id``."""
    return str(event.get("user_id") or event["anon_id"])


# --- malformed records (each one breaks a rule of SPEC section 1) ---

MALFORMED_KINDS = ("truncated", "no_event_id", "naive_ts", "bad_type", "negative_price", "qty0")
_BAD_TYPES = ("ViewProduct", "Add_To_Cart", "SPIN_WHEEL", "purchaseDone")


def _naive_ts(ts: int | str) -> str:
    """The same instant without an offset: not RFC 3339 as SPEC requires."""
    moment = (
        _EPOCH + timedelta(milliseconds=ts) if isinstance(ts, int) else datetime.fromisoformat(ts)
    )
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _break(kind: str, event: Event, rng: random.Random) -> None:
    """Make ``event`` invalid in place, the way ``kind`` says."""
    if kind == "no_event_id":
        del event["event_id"]
    elif kind == "naive_ts":
        event["ts"] = _naive_ts(event["ts"])
    elif kind == "bad_type":
        event["type"] = rng.choice(_BAD_TYPES)
    elif kind == "negative_price":
        event.setdefault("product_id", "p000001")
        event["type"] = "view_product"
        event["price"] = -round(rng.uniform(0.01, 500.0), 2)
    else:  # qty0
        event.setdefault("product_id", "p000001")
        event["type"] = "add_to_cart"
        event["quantity"] = 0


def _malformed(rng: random.Random, base: Event, n: int, seed: int) -> bytes:
    kind = rng.choice(MALFORMED_KINDS)
    event = {**base, "event_id": f"bad-{seed}-{n}"}
    if kind == "truncated":
        raw = orjson.dumps(event)
        return raw[: rng.randint(1, len(raw) - 1)]
    _break(kind, event, rng)
    return orjson.dumps(event)


def generate_records(cfg: GeneratorConfig) -> Iterator[tuple[bytes, bytes]]:
    """Exactly ``cfg.events`` Kafka records ``(key, value)`` of shoppers, plus the
    catalog's ``product_update`` records among them (``catalog_updates``), keyed by
    product_id and never malformed.

    Each shopper record is malformed with probability ``invalid_ratio`` (derived
    from the next valid event, whose identity is the key); the valid records
    are, in order, a prefix of :func:`generate` for the same config.
    """
    mixer = random.Random(cfg.seed * 1_000_003 + 7)
    valid = generate(cfg)
    pending: Event | None = None
    for n in range(cfg.events):
        if pending is None:
            pending = next(valid)
            while pending["type"] == "product_update":  # the catalog's own records
                yield pending["product_id"].encode(), orjson.dumps(pending)
                pending = next(valid)
        key = identity_key(pending).encode()
        if cfg.invalid_ratio and mixer.random() < cfg.invalid_ratio:
            yield key, _malformed(mixer, pending, n, cfg.seed)
        else:
            yield key, orjson.dumps(pending)
            pending = None


def write_jsonl(cfg: GeneratorConfig, path: str | Path) -> int:
    """Write :func:`generate_records` values one per line; return the line count."""
    count = 0
    with Path(path).open("wb") as out:
        for _, value in generate_records(cfg):
            out.write(value + b"\n")
            count += 1
    return count
