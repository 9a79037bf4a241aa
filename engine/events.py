"""The event contract (SPEC section 1) as frozen msgspec Structs.

Rules of this interface:

* :func:`decode_event` turns one JSON document (a Kafka value or a JSONL line)
  into an :class:`Event` or raises :class:`~engine.errors.InvalidEvent` whose
  ``reason`` names the field and the bad value. It never raises anything else
  for bad input and never returns a half-valid event.
* After decoding, ``Event.ts`` is always epoch milliseconds (an ``int``), even
  when the wire carried an RFC 3339 string.
* Unknown top-level fields are ignored (storefronts add their own); known
  fields are checked strictly, including the per-type required fields below.
* Every new field gets a default, so old producers stay valid.
* Numbers are bounded to what the state store holds: integers anywhere in an
  event (``ts``, ``quantity``, ``attributes``, ``props``) fit in a signed
  64-bit integer, ``quantity`` is at most :data:`MAX_QUANTITY`, floats are
  finite, and ``ts`` is before :data:`MAX_TS` (2100-01-01). An event outside
  these bounds is invalid, so it is dead-lettered, never stored.
* :func:`check_not_future` refuses a ``ts`` more than :data:`MAX_FUTURE_MS`
  (24 hours) after a reference time: live, the time the message reached
  Kafka (its CreateTime, so re-reading the same message decides the same);
  in a backtest, the moment the backtest runs. One event dated in the year
  9999 cannot move the clock for everyone.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from engine.errors import InvalidEvent

MAX_EVENT_BYTES: Final = 64 * 1024
MAX_STRING: Final = 1024
MAX_PROPS_DEPTH: Final = 5
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
MAX_QUANTITY: Final = 1_000_000
MAX_TS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z in epoch ms
MAX_FUTURE_MS: Final = 24 * 3_600_000

STANDARD_TYPES: Final = frozenset(
    {
        "view_product",
        "view_category",
        "search",
        "add_to_cart",
        "remove_from_cart",
        "add_favorite",
        "remove_favorite",
        "purchase",
        "signup",
        "login",
        "consent",
        "profile",
        "engagement",
    }
)
CHANNELS: Final = ("email", "sms", "push", "webpush", "whatsapp", "telegram", "inapp", "onsite")
ENGAGEMENT_KINDS: Final = ("delivered", "opened", "clicked", "bounced", "unsubscribed")
PRODUCT_TYPES: Final = frozenset(
    {"view_product", "add_to_cart", "remove_from_cart", "add_favorite", "remove_favorite"}
)
# SPEC section 10: the catalog's feed (the only type without an identity) and the
# events the engine derives from it for each interested shopper (engine.catalog).
PRODUCT_UPDATE: Final = "product_update"
DERIVED_TYPES: Final = ("price_drop", "back_in_stock")
VIAS: Final = ("cart", "favorite", "view")  # strongest first

# \Z, not $: `$` also matches before a trailing newline.
TYPE_PATTERN: Final = r"^[a-z][a-z0-9_.:-]{0,63}\Z"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_BIRTHDAY = re.compile(r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\Z")

Str = Annotated[str, msgspec.Meta(max_length=MAX_STRING)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_STRING)]
Price = Annotated[float, msgspec.Meta(ge=0)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Scalar = Str | Int64 | float | bool | None
EngagementKind = Literal["delivered", "opened", "clicked", "bounced", "unsubscribed"]


class Item(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One line of a purchase's ``items``."""

    product_id: Name
    category: Str | None = None
    price: Price | None = None
    quantity: Quantity | None = None

    @property
    def qty(self) -> int:
        """Quantity with the contract's default of 1."""
        return 1 if self.quantity is None else self.quantity


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One storefront event. Construct with :func:`decode_event` for wire input."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    type: Annotated[str, msgspec.Meta(pattern=TYPE_PATTERN)]
    # The wire allows epoch ms or an RFC 3339 string; __post_init__ normalises
    # to ms, so the rest of the code (and mypy) only ever sees an int.
    if TYPE_CHECKING:
        ts: int
    else:
        ts: int | Str
    user_id: Name | None = None
    anon_id: Name | None = None
    product_id: Name | None = None
    category: Str | None = None
    price: Price | None = None
    quantity: Quantity | None = None
    query: Str | None = None
    order_id: Str | None = None
    revenue: float | None = None
    items: tuple[Item, ...] | None = None
    channel: Str | None = None
    granted: bool | None = None
    attributes: dict[Name, Scalar] | None = None
    action_id: Str | None = None
    kind: EngagementKind | None = None
    props: dict[Str, Any] | None = None
    # product_update (SPEC section 10)
    stock: Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)] | None = None
    name: Str | None = None
    url: Str | None = None
    image: Str | None = None
    # price_drop / back_in_stock, derived by the engine (engine.catalog)
    old_price: Price | None = None
    drop_pct: float | None = None
    via: Literal["cart", "favorite", "view"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ts, int):
            msgspec.structs.force_setattr(self, "ts", parse_ts(self.ts))
        elif self.ts < 0:
            raise ValueError(f"ts {self.ts} is negative; send epoch milliseconds")
        if self.ts >= MAX_TS:
            raise ValueError(
                f"ts {self.ts} is after 2100-01-01; send epoch milliseconds (13 digits today)"
            )
        _check_floats(self)
        if self.type == PRODUCT_UPDATE:
            if self.user_id or self.anon_id:
                raise ValueError(
                    "product_update events carry no user_id or anon_id (a product, not a "
                    "shopper); send the shopper's own event separately"
                )
        elif not (self.user_id or self.anon_id):
            raise ValueError("one of user_id or anon_id is required (the identity key)")
        _check_type_fields(self)
        if self.props is not None:
            _check_props(self.props, 1, "props")

    @property
    def key(self) -> str:
        """Identity key: ``user_id`` when present, else ``anon_id``."""
        return self.user_id or self.anon_id or ""

    @property
    def qty(self) -> int:
        """Quantity with the contract's default of 1."""
        return 1 if self.quantity is None else self.quantity


def parse_ts(text: str) -> int:
    """Parse an RFC 3339 timestamp with offset into epoch milliseconds."""
    if not _RFC3339.match(text):
        raise ValueError(
            f"ts {text!r} is not epoch milliseconds or an RFC 3339 time with offset "
            "(e.g. 2024-05-01T10:00:00+03:00 or ...Z)"
        )
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError as exc:
        raise ValueError(f"ts {text!r} is not a real date/time ({exc})") from None
    # Integer arithmetic on timedelta: float timestamps lose a millisecond after 2038.
    ms = (moment - _EPOCH) // _MS
    if ms < 0:
        raise ValueError(f"ts {text!r} is before 1970; event times are epoch milliseconds >= 0")
    return ms


def _require(event: Event, *fields: str) -> None:
    for name in fields:
        if getattr(event, name) is None:
            raise ValueError(f"`{event.type}` events require `{name}`")


def _check_type_fields(event: Event) -> None:
    """Required fields per standard type; custom types need only the basics."""
    kind = event.type
    if kind in PRODUCT_TYPES or kind == PRODUCT_UPDATE:
        _require(event, "product_id")
    elif kind == "view_category":
        _require(event, "category")
    elif kind == "search":
        _require(event, "query")
    elif kind == "consent":
        _require(event, "channel", "granted")
        _check_channel(event.channel)
    elif kind == "engagement":
        _require(event, "action_id", "channel", "kind")
        _check_channel(event.channel)
    elif kind == "profile":
        _require(event, "attributes")
        _check_attributes(event.attributes or {})


def _check_channel(channel: str | None) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}{suggest(str(channel), CHANNELS)}")


def _check_attributes(attributes: dict[str, Any]) -> None:
    tz = attributes.get("timezone")
    if tz is not None and (not isinstance(tz, str) or tz not in _time_zones()):
        raise ValueError(
            f"attributes.timezone {tz!r} is not an IANA time zone (e.g. Europe/Istanbul)"
        )
    birthday = attributes.get("birthday")
    if birthday is not None and not (isinstance(birthday, str) and _BIRTHDAY.match(birthday)):
        raise ValueError(f"attributes.birthday {birthday!r} is not MM-DD (e.g. 04-23)")


def _check_floats(event: Event) -> None:
    """Floats must be finite (JSON has no infinity, but 1e999 decodes to one)."""
    for name in ("price", "revenue", "old_price", "drop_pct"):
        value = getattr(event, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} {value} is not a finite number")
    for item in event.items or ():
        if item.price is not None and not math.isfinite(item.price):
            raise ValueError(f"items price {item.price} is not a finite number")
    for key, value in (event.attributes or {}).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attributes.{key} {value} is not a finite number")


def check_not_future(event: Event, reference_ms: int, bound_ms: int = MAX_FUTURE_MS) -> None:
    """Raise InvalidEvent when ``event.ts`` is more than ``bound_ms`` after ``reference_ms``."""
    if event.ts > reference_ms + bound_ms:
        ahead_h = (event.ts - reference_ms) / 3_600_000
        raise InvalidEvent(
            f"ts {event.ts} is {ahead_h:,.1f} h after the time the event was received; "
            f"events more than {bound_ms // 3_600_000} h in the future are refused "
            "(check the producer's clock and that ts is in milliseconds)"
        )


def _check_props(value: Any, depth: int, path: str) -> None:
    """Props are free-form but bounded: nesting depth, string lengths, int64, finite floats."""
    if isinstance(value, dict):
        if depth > MAX_PROPS_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_PROPS_DEPTH} levels")
        for key, inner in value.items():
            _check_string(key, f"{path} key")
            _check_props(inner, depth + 1, f"{path}.{key}")
    elif isinstance(value, list):
        if depth > MAX_PROPS_DEPTH:
            raise ValueError(f"{path} nests deeper than {MAX_PROPS_DEPTH} levels")
        for index, inner in enumerate(value):
            _check_props(inner, depth + 1, f"{path}[{index}]")
    elif isinstance(value, str):
        _check_string(value, path)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{path} {value} does not fit in a signed 64-bit integer")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} {value} is not a finite number")


def _check_string(value: str, path: str) -> None:
    if len(value) > MAX_STRING:
        raise ValueError(f"{path} is {len(value)} chars; the limit is {MAX_STRING}")


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def suggest(word: str, choices: Any) -> str:
    """A "did you mean" suffix for an unknown name, or "" when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def decode_event(raw: bytes | str) -> Event:
    """Decode and validate one event; raise InvalidEvent with a precise reason."""
    try:
        data = raw.encode() if isinstance(raw, str) else raw
    except UnicodeError:
        raise InvalidEvent("text is not valid Unicode (lone surrogate); send UTF-8 JSON") from None
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event is {len(data)} bytes; the limit is {MAX_EVENT_BYTES} (64 KiB)")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidEvent(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"not valid UTF-8 ({exc.reason}); send UTF-8 JSON") from None


def encode_event(event: Event) -> bytes:
    """Encode an event as compact JSON (ts as epoch ms)."""
    return _encoder.encode(event)
