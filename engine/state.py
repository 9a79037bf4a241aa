"""A user's state and how one event changes it.

Rules of this interface:

* :func:`apply` is pure apart from mutating the ``UserState`` it is given: the
  clock is the ``now`` argument (epoch ms), never the machine's.
* Applying an event whose ``event_id`` the state already holds changes nothing
  and returns ``"duplicate"``. Ids are remembered as long as the event stays
  in its window, so an event the window could not keep (older than its
  ``max_age``, or no newer than the oldest record of a full window) is refused
  as ``"stale"``: it could not be told apart from a replay of an evicted one.
* Every part of the state is bounded by :class:`~engine.windows.WindowConfig`:
  windows by count on insert and by age in :func:`prune`, cart lines and
  favorites by count and age, profile attributes by key count, and the number
  of distinct custom event types by ``custom_types_max`` (50): a new type past
  it drops the custom type whose newest record is oldest, whole, and counts
  it in ``UserState.types_dropped``.
* :func:`dumps` / :func:`loads` round-trip the state exactly (msgpack).
* ``UserState.identified`` is true once an applied event carried a ``user_id``
  (a guest, a shopper known only by ``anon_id``, stays false).
* ``UserState.merged`` lists the anonymous ids merged into this user
  (:mod:`engine.identity`), the latest :data:`MAX_MERGED`.
* ``UserState.linking`` and ``UserState.holding`` are the live engine's
  identity hand-over across shards (:mod:`flows.pipeline.identity`): the link
  an anonymous id waits to make, and the events a user holds until an
  anonymous id's state reaches it; each holds at most :data:`MAX_HELD` events.
* Age limits come from one rule, :mod:`engine.retention`: :func:`apply` refuses
  an event older than its type's cutoff and :func:`prune` drops what is older;
  readers ignore it whether or not ``prune`` ran.
* Every applied event is also added to the all-time rollups of its type
  (``UserState.rollups``, :mod:`engine.history`); a state written before they
  existed gets them from its windows at its next event (:func:`ensure_rollups`).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from engine.events import STANDARD_TYPES, Event, Scalar
from engine.history import TypeRollup, backfill, rollups_view
from engine.history import record as record_history
from engine.retention import cart_kept_from, favorites_kept_from, kept_from, limits_kept_from
from engine.windows import (
    DEFAULT_CONFIG,
    Stored,
    WindowConfig,
    event_hash,
    evict_older,
    insert,
    stored,
)

Outcome = Literal["applied", "duplicate", "stale"]
STATE_VERSION = 1
MAX_MERGED = 100  # anonymous ids remembered per user (engine.identity)
MAX_HELD = 1_000  # events one identity holds while a link is handed over (live only)


class CartLine(msgspec.Struct, array_like=True, gc=False):
    """One product in the cart: quantity, last known unit price and category."""

    quantity: int
    price: float | None
    category: str | None
    ts: int


class Consent(msgspec.Struct, array_like=True, gc=False):
    """The latest consent decision for a channel, by event time."""

    granted: bool
    ts: int


class Enrollment(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One user's run through one journey (for one key).

    ``pc`` is the path of the next step to run and ``due`` when it runs (the
    end of a wait or of a quiet-hours deferral); ``pc`` None means finished.
    """

    journey: str
    key: str = ""
    seq: int = 0
    entered: int = 0
    entry: Event | None = None
    pc: str | None = None
    due: int | None = None
    actions: list[str] = []
    rules_version: str = ""
    # The identity key its action ids hash ("" = the state's key). Set when an
    # anonymous id's enrollment moves to a user (engine.identity), so its later
    # steps keep ids of the same family and never collide with the user's own.
    origin: str = ""
    # Experiments (engine.experiments): the split arm it took ("" before a split or
    # without one) and whether the entrant is in the journey's holdout.
    variant: str = ""
    holdout: bool = False


class GoalEntry(msgspec.Struct, array_like=True, gc=False):
    """An entry into a journey with a goal, until it converts or ``until`` passes."""

    entered: int
    until: int
    variant: str = ""
    holdout: bool = False
    # The watched segments (UserState.segments) the shopper was in at entry, for
    # per-segment reports (engine.measurement); () in records written before them.
    segments: tuple[str, ...] = ()


class SentRef(msgspec.Struct, array_like=True, gc=False):
    """What a sent action was, so its engagement can be attributed (engine.experiments)."""

    journey: str
    step: str
    channel: str
    at: int
    variant: str = ""


class Entered(msgspec.Struct, array_like=True, gc=False):
    """How often and when a user last entered a journey (for re-entry rules)."""

    count: int
    last: int


class Sent(msgspec.Struct, array_like=True, gc=False):
    """One sent action, for frequency caps."""

    ts: int
    channel: str


class Held(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An event kept, not applied yet, while a link is handed over between shards.

    ``route``/``anon`` are the live resolver's tag (``via``, ``link`` or
    ``conflict`` and the anonymous id it names; "" when untagged).
    """

    event: bytes  # the event's JSON (engine.events.encode_event)
    now: int  # the clock it is applied at
    ingested: int | None = None
    route: str = ""
    anon: str = ""
    product: bytes = b""  # a product update's fan-out: the product as it made it (msgpack)


class Linking(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """An anonymous id's pending link to ``user``, made once the clock passes ``at``."""

    user: str
    at: int
    held: list[Held] = []  # its events at or after ``at``: they travel to the user


class Holding(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """A user waiting for anonymous id ``anon``'s state (or its conflict answer)."""

    anon: str
    held: list[Held] = []  # the link event first, then every later event of the user


class UserState(msgspec.Struct, kw_only=True, omit_defaults=True, dict=True):
    """Everything tetik keeps about one identity key.

    ``dict=True`` lets the runtime cache the set of event-id hashes beside the
    struct without serialising it (it is derived from the windows).
    """

    v: int = STATE_VERSION
    key: str = ""
    events: int = 0
    first_seen: int = 0
    last_seen: int = 0
    windows: dict[str, list[Stored]] = {}
    cart: dict[str, CartLine] = {}
    favorites: dict[str, int] = {}
    consent: dict[str, Consent] = {}
    profile: dict[str, Scalar] = {}
    enrollments: dict[str, Enrollment] = {}
    entered: dict[str, Entered] = {}
    sends: list[Sent] = []
    types_dropped: int = 0
    # SPEC section 9 (engine.segments): the latest `now` the engine ran this user at,
    # when the rules have recheck or broadcast instants; the watched segments the user
    # is in (name -> entered at; at most one per segment of the rules); the fingerprint
    # of the definitions they were computed with.
    clock: int = 0
    segments: dict[str, int] = {}
    segment_defs: str = ""
    merged: list[str] = []  # anonymous ids merged in, oldest first, at most MAX_MERGED
    linking: Linking | None = None  # live only: this anonymous id's pending link
    holding: Holding | None = None  # live only: events held until a merge
    # live only: this anonymous id's events that wait for the watermark to pass them
    # (flows.pipeline.shard: a login read later from another partition may precede them)
    deferred: list[Held] = []
    rollups: dict[str, TypeRollup] = {}  # all-time history per event type (engine.history)
    # An applied event carried a user_id: the shopper is a known customer, not a guest
    # (the rules' `anonymous` is its negation). A state written before this field says
    # False until its next event with a user_id.
    identified: bool = False
    # Experiments (engine.experiments): journey -> its last entry awaiting the goal.
    goals: dict[str, GoalEntry] = {}
    # action_id -> the journey, step, channel and variant of one of the latest sent
    # actions (oldest first, at most engine.experiments.MAX_SENT_REFS).
    sent_refs: dict[str, SentRef] = {}


def _ids(state: UserState) -> set[int]:
    """Hashes of every event id the windows hold, built once per loaded state."""
    cache: set[int] | None = state.__dict__.get("_ids")
    if cache is None:
        cache = {record.h for window in state.windows.values() for record in window}
        state.__dict__["_ids"] = cache
    return cache


def reset_ids(state: UserState) -> None:
    """Forget the cached id hashes after the windows changed wholesale (a merge)."""
    state.__dict__.pop("_ids", None)


def _forget(state: UserState, dropped: list[Stored]) -> None:
    if not dropped:
        return
    ids = _ids(state)
    for record in dropped:
        ids.discard(record.h)


def apply(
    state: UserState, event: Event, now: int, config: WindowConfig = DEFAULT_CONFIG
) -> Outcome:
    """Apply one validated event to the user's state at clock ``now`` (epoch ms)."""
    h = event_hash(event.event_id)
    ids = _ids(state)
    if h in ids:
        return "duplicate"
    limits = config.limits(event.type)
    window = state.windows.get(event.type)
    if event.ts < limits_kept_from(limits, now) or _cannot_stay(window, event.ts, limits.max_count):
        return "stale"
    if not state.rollups and state.windows:
        ensure_rollups(state, config)  # a state from before rollups
    revenue = _revenue(event)
    item = stored(event, h, revenue)
    if window is None:
        if event.type not in STANDARD_TYPES:
            _make_room_for_type(state, config.custom_types_max)
        window = state.windows[event.type] = []
    ids.add(h)
    _forget(state, insert(window, item, limits))
    record_history(state.rollups, event.type, event.ts, event.category, revenue, config)
    _apply_effects(state, event, config)
    _touch(state, event)
    return "applied"


def ensure_rollups(state: UserState, config: WindowConfig = DEFAULT_CONFIG) -> None:
    """Give a state written before rollups existed its rollups, from its windows."""
    if not state.rollups and state.windows:
        backfill(state.rollups, state.windows, config)


def _make_room_for_type(state: UserState, limit: int) -> None:
    """Drop the least recently seen custom types until a new one fits under ``limit``."""
    custom = [name for name in state.windows if name not in STANDARD_TYPES]
    if len(custom) < limit:
        return
    custom.sort(key=lambda name: state.windows[name][-1].ts if state.windows[name] else 0)
    for name in custom[: len(custom) - limit + 1]:
        _forget(state, state.windows.pop(name))
        state.types_dropped += 1


def _cannot_stay(window: list[Stored] | None, ts: int, max_count: int) -> bool:
    """True when a full window would drop the event at once (no newer than its oldest).

    Such an event could be a redelivery of one the count bound already evicted
    (with its id), so applying it could count it twice.
    """
    return window is not None and len(window) >= max_count and ts <= window[0].ts


def _touch(state: UserState, event: Event) -> None:
    state.key = state.key or event.key
    if event.user_id is not None:
        state.identified = True
    state.first_seen = event.ts if state.events == 0 else min(state.first_seen, event.ts)
    state.last_seen = max(state.last_seen, event.ts)
    state.events += 1


def _revenue(event: Event) -> float | None:
    """A purchase's revenue; the sum of its items when the event omits it."""
    if event.type != "purchase" or event.revenue is not None or not event.items:
        return event.revenue
    return round(sum((item.price or 0.0) * item.qty for item in event.items), 2)


def _apply_effects(state: UserState, event: Event, config: WindowConfig) -> None:
    """Changes beyond the window itself: cart, favorites, consent, profile."""
    handler = _EFFECTS.get(event.type)
    if handler is not None:
        handler(state, event, config)


def _add_to_cart(state: UserState, event: Event, config: WindowConfig) -> None:
    pid = event.product_id or ""
    line = state.cart.get(pid)
    if line is None:
        state.cart[pid] = CartLine(event.qty, event.price, event.category, event.ts)
        _trim_oldest(state.cart, config.cart_max_lines, lambda line: line.ts)
        return
    line.quantity += event.qty
    line.price = event.price if event.price is not None else line.price
    line.category = event.category or line.category
    line.ts = max(line.ts, event.ts)


def _remove_from_cart(state: UserState, event: Event, config: WindowConfig) -> None:
    """With ``quantity``, take that many away; without, remove the whole line."""
    pid = event.product_id or ""
    line = state.cart.get(pid)
    if line is None:
        return
    if event.quantity is not None and line.quantity > event.quantity:
        line.quantity -= event.quantity
        line.ts = max(line.ts, event.ts)
    else:
        del state.cart[pid]


def _purchase(state: UserState, event: Event, config: WindowConfig) -> None:
    """A purchase empties its items from the cart, or the whole cart without items."""
    if event.items is None:
        state.cart.clear()
        return
    for item in event.items:
        state.cart.pop(item.product_id, None)


def _add_favorite(state: UserState, event: Event, config: WindowConfig) -> None:
    state.favorites[event.product_id or ""] = event.ts
    _trim_oldest(state.favorites, config.favorites_max, lambda ts: ts)


def _remove_favorite(state: UserState, event: Event, config: WindowConfig) -> None:
    state.favorites.pop(event.product_id or "", None)


def _set_consent(state: UserState, channel: str, granted: bool, ts: int) -> None:
    """Later decisions win by event time, so a late old event cannot undo an opt-out."""
    current = state.consent.get(channel)
    if current is None or ts >= current.ts:
        state.consent[channel] = Consent(granted, ts)


def _consent(state: UserState, event: Event, config: WindowConfig) -> None:
    _set_consent(state, event.channel or "", bool(event.granted), event.ts)


def _engagement(state: UserState, event: Event, config: WindowConfig) -> None:
    if event.kind == "unsubscribed":
        _set_consent(state, event.channel or "", False, event.ts)


def _profile(state: UserState, event: Event, config: WindowConfig) -> None:
    """Merge attributes; ``null`` deletes one; new keys stop at ``profile_max_keys``."""
    for name, value in (event.attributes or {}).items():
        if value is None:
            state.profile.pop(name, None)
        elif name in state.profile or len(state.profile) < config.profile_max_keys:
            state.profile[name] = value


_EFFECTS = {
    "add_to_cart": _add_to_cart,
    "remove_from_cart": _remove_from_cart,
    "purchase": _purchase,
    "add_favorite": _add_favorite,
    "remove_favorite": _remove_favorite,
    "consent": _consent,
    "engagement": _engagement,
    "profile": _profile,
}


def _trim_oldest(mapping: dict[str, Any], limit: int, ts_of: Any) -> None:
    while len(mapping) > limit:
        oldest = min(mapping, key=lambda k: ts_of(mapping[k]))
        del mapping[oldest]


def prune(state: UserState, now: int, config: WindowConfig = DEFAULT_CONFIG) -> None:
    """Drop everything older than its age limit at clock ``now`` (:mod:`engine.retention`).

    Only memory changes: readers already ignore what this drops. Call it at the
    latest clock the user was run at, never a later one. The rollups are not
    pruned here (their months are bounded when a month is added).
    """
    if state.events and now - state.first_seen < _shortest_age(config):
        return  # everything kept came at or after first_seen: nothing is old enough yet
    for name in list(state.windows):
        window = state.windows[name]
        _forget(state, evict_older(window, kept_from(config, name, now)))
        if not window:
            del state.windows[name]
    cart_cutoff = cart_kept_from(config, now)
    for pid in [p for p, line in state.cart.items() if line.ts < cart_cutoff]:
        del state.cart[pid]
    fav_cutoff = favorites_kept_from(config, now)
    for pid in [p for p, ts in state.favorites.items() if ts < fav_cutoff]:
        del state.favorites[pid]


def _shortest_age(config: WindowConfig) -> int:
    ages = [config.default.max_age_ms, config.cart_max_age_ms, config.favorites_max_age_ms]
    ages.extend(limits.max_age_ms for limits in config.types.values())
    return min(ages)


def cart_total(state: UserState) -> float:
    """Sum of quantity x price over the cart (lines without a price count 0)."""
    return lines_total(state.cart)


def cart_count(state: UserState) -> int:
    """Number of items in the cart (the sum of quantities, as storefronts show it)."""
    return lines_count(state.cart)


def lines_total(lines: dict[str, CartLine]) -> float:
    """:func:`cart_total` of some cart lines (those that count at a time, say)."""
    return round(sum((line.quantity * (line.price or 0.0) for line in lines.values()), 0.0), 2)


def lines_count(lines: dict[str, CartLine]) -> int:
    """:func:`cart_count` of some cart lines."""
    return sum(line.quantity for line in lines.values())


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UserState)


def dumps(state: UserState) -> bytes:
    """Serialise a state exactly (msgpack, compact array form for records)."""
    return _encoder.encode(state)


def loads(data: bytes) -> UserState:
    """The inverse of :func:`dumps`."""
    return _decoder.decode(data)


def to_view(state: UserState) -> dict[str, Any]:
    """A readable JSON-ready view of the state (``tetik state USER``)."""
    return {
        "user": state.key,
        "events_applied": state.events,
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "cart": {
            "total": cart_total(state),
            "count": cart_count(state),
            "lines": [_line_view(pid, line) for pid, line in state.cart.items()],
        },
        "favorites": [{"product_id": pid, "ts": ts} for pid, ts in state.favorites.items()],
        "consent": {ch: {"granted": c.granted, "ts": c.ts} for ch, c in state.consent.items()},
        "profile": dict(state.profile),
        "windows": {name: [_record_view(r) for r in w] for name, w in state.windows.items()},
        "custom_types_dropped": state.types_dropped,
        "segments": dict(state.segments),
        "merged": list(state.merged),
        "identified": state.identified,
        "history": rollups_view(state.rollups),
        **_handover_view(state),
    }


def _handover_view(state: UserState) -> dict[str, Any]:
    """A pending link or hold, shown only while there is one."""
    view: dict[str, Any] = {}
    if state.linking is not None:
        link = state.linking
        view["linking"] = {"user": link.user, "at": link.at, "held": len(link.held)}
    if state.holding is not None:
        view["holding"] = {"anon": state.holding.anon, "held": len(state.holding.held)}
    if state.deferred:
        view["deferred"] = len(state.deferred)
    return view


def _line_view(pid: str, line: CartLine) -> dict[str, Any]:
    return {
        "product_id": pid,
        "quantity": line.quantity,
        "price": line.price,
        "category": line.category,
        "ts": line.ts,
    }


def _record_view(record: Stored) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for name in record.__struct_fields__:
        value = getattr(record, name)
        if value is not None and name != "h":
            view[name] = msgspec.to_builtins(value)
    return view
