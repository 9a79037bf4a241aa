"""Segment HTTP tracking API calls as tetik events (SPEC sections 1, 7 and 12).

Pure: bytes in, :class:`~engine.events.Event` out, nothing else imported from
the live side. The collector (:mod:`flows.collect.app`) calls
:func:`events_of` with one request's body.

Rules of this interface:

* :func:`events_of` returns every event of a request or raises
  :class:`~engine.errors.InvalidEvent` with a one-line reason: a request is
  taken whole or not at all, so one bad call in a ``batch`` refuses the batch
  (the reason names the call by its index, and says how many were bad).
* Each call becomes one event checked by the project's own validator
  (:func:`engine.events.decode_event`, then
  :func:`engine.events.check_not_future` against the time the request came):
  the collector never produces what the engine would dead-letter.
* Common fields: ``messageId`` -> ``event_id`` (a call without one gets
  ``seg-`` and a digest of the call, so an SDK's retry of it gets the same id
  and the engine drops the repeat); ``timestamp`` (else
  ``originalTimestamp``, else the time the request came) -> ``ts``;
  ``userId`` -> ``user_id``, ``anonymousId`` -> ``anon_id`` (whole numbers
  become text; one of them is required). A device whose clock is wrong (the
  request's ``sentAt``, or the call's own, more than
  :data:`SKEW_TOLERANCE_MS` from the time received) has its calls' times
  shifted by the difference, as Segment corrects device clocks; an offline
  queue sent later with a right clock keeps its times. A call carrying both links the
  anonymous id to the user (SPEC section 7): nothing more is needed here.
* ``track``: the event name, snake_cased (``Coupon Applied`` ->
  ``coupon_applied``, ``checkoutStarted`` -> ``checkout_started``, accents
  dropped), names the type; the e-commerce names of :data:`TRACK_TYPES`
  (matched by that snake_cased name, so ``product viewed`` counts too) map
  to the standard types. From ``properties``, ``product_id``, ``category``,
  ``price``, ``quantity``, ``query``, ``order_id`` and ``revenue`` (else
  ``total``) become the event's fields, ``products`` its ``items``, and, for
  ``consent`` and ``engagement``, ``channel``, ``granted``, ``action_id``
  and ``kind``; the other properties go to ``props``. Prices, revenue and
  quantities sent as numeric text are read as numbers; ids sent as whole
  numbers become text.
* ``identify`` becomes a ``profile`` event: scalar traits go to
  ``attributes`` with snake_cased names (``firstName`` -> ``first_name``),
  ``birthday`` as ``MM-DD`` (an ISO date's month and day), ``timezone`` from
  ``context.timezone`` when the traits lack it; traits that are objects or
  lists go to ``props``.
* ``page`` becomes a ``page_view`` event and ``screen`` (mobile SDKs) a
  ``screen_view`` event (custom types: SPEC section 1 has no standard one):
  ``properties`` and the call's ``name`` and ``category`` go to ``props``.
* ``alias`` becomes an ``alias`` event that links ``previousId`` (as
  ``anon_id``) to ``userId`` (both required), as any event carrying both
  does (SPEC section 7): so a storefront that only aliases still gets one
  customer across devices. tetik links anonymous ids to users, so a
  ``previousId`` that was a user id is taken as an anonymous id: its later
  events sent as ``anonymousId`` go to the new user. An alias of an id to
  itself links nothing (an event of the user alone).
* In a ``batch``, ``group`` calls are accepted and dropped (:data:`IGNORED`):
  tetik has no event for them. A batch's own ``context`` is the default of
  its calls' contexts.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, Final

import orjson

from engine.errors import InvalidEvent
from engine.events import TYPE_PATTERN, Event, check_not_future, decode_event, parse_ts

# Segment's e-commerce spec names (snake_cased) and the standard types they are.
TRACK_TYPES: Final = {
    "product_viewed": "view_product",
    "product_list_viewed": "view_category",
    "products_searched": "search",
    "product_added": "add_to_cart",
    "product_removed": "remove_from_cart",
    "product_added_to_wishlist": "add_favorite",
    "product_removed_from_wishlist": "remove_favorite",
    "order_completed": "purchase",
    "signed_up": "signup",
    "signed_in": "login",
}
# The call types collected and the event type each becomes (a track's own name).
CALL_TYPES: Final = {
    "track": "",
    "identify": "profile",
    "page": "page_view",
    "screen": "screen_view",
    "alias": "alias",
}
IGNORED: Final = frozenset({"group"})
# A sender's clock this far from ours (its sentAt against the time received) is wrong,
# not late: its calls' times are shifted by the difference. Below it, times stay as sent.
SKEW_TOLERANCE_MS: Final = 60_000
PRODUCT_FIELDS: Final = ("product_id", "category", "price", "quantity", "query", "order_id")
FEEDBACK_FIELDS: Final = ("channel", "granted", "action_id", "kind")
FEEDBACK_TYPES: Final = frozenset({"consent", "engagement"})
_TYPE = re.compile(TYPE_PATTERN)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_NAME = re.compile(r"[^a-z0-9]+")  # a lone . : or - stays, any other run is one _
_ISO_DATE = re.compile(r"^\d{4}-(\d{2})-(\d{2})")
_SCALARS = (str, int, float, bool, type(None))


def events_of(body: bytes, kind: str, received_ms: int) -> list[Event]:
    """The events of one request to ``/v1/<kind>`` (see the module rules)."""
    doc = _json_object(body)
    if kind != "batch":
        return [to_event(doc, kind, received_ms)]
    calls = doc.get("batch")
    if not isinstance(calls, list):
        raise InvalidEvent("a batch needs `batch`, a list of calls")
    context = doc.get("context")
    events: list[Event] = []
    bad: list[str] = []
    for index, call in enumerate(calls):
        try:
            event = _batch_call(call, context, doc.get("sentAt"), received_ms)
        except InvalidEvent as exc:
            bad.append(f"batch[{index}]: {exc.reason}")
            continue
        if event is not None:
            events.append(event)
    if bad:
        more = f" (and {len(bad) - 1} more bad calls)" if len(bad) > 1 else ""
        raise InvalidEvent(f"{bad[0]}{more}; nothing of this batch was taken")
    return events


def _batch_call(call: Any, context: Any, sent_at: Any, received_ms: int) -> Event | None:
    if not isinstance(call, dict):
        raise InvalidEvent("a call must be a JSON object")
    kind = call.get("type")
    if kind in IGNORED:
        return None
    if not isinstance(kind, str) or kind not in CALL_TYPES:
        raise InvalidEvent(
            f"call type {kind!r} is not collected; send track, identify, page, screen or alias"
        )
    if isinstance(context, dict):
        own = call.get("context")
        call = {**call, "context": {**context, **(own if isinstance(own, dict) else {})}}
    if sent_at is not None and "sentAt" not in call:
        call = {**call, "sentAt": sent_at}
    return to_event(call, kind, received_ms)


def to_event(call: Mapping[str, Any], kind: str, received_ms: int) -> Event:
    """One ``track``/``identify``/``page``/``screen``/``alias`` call as a validated event."""
    doc = _common(call, received_ms)
    if kind == "track":
        _track(call, doc)
    elif kind == "identify":
        _identify(call, doc)
    elif kind == "alias":
        _alias(call, doc)
    else:
        _page(call, doc, CALL_TYPES[kind])
    try:
        event = decode_event(orjson.dumps(doc))
    except orjson.JSONEncodeError as exc:
        raise InvalidEvent(f"the call does not encode as JSON ({exc})") from None
    except InvalidEvent as exc:
        raise InvalidEvent(f"{_what(call, kind)}: {exc.reason}") from None
    check_not_future(event, received_ms)
    return event


@functools.lru_cache(maxsize=4096)
def type_of(name: str) -> str:
    """The event type a track call's name makes (a storefront sends few distinct names)."""
    snaked = snake(name)
    return TRACK_TYPES.get(snaked, snaked)


def snake(name: str) -> str:
    """``Product Added to Wishlist`` -> ``product_added_to_wishlist`` (accents dropped,
    Turkish dotless i read as i)."""
    text = unicodedata.normalize("NFKD", name.strip().replace("\u0131", "i"))
    text = text.encode("ascii", "ignore").decode()
    text = _CAMEL.sub("_", text).lower()
    return _NOT_NAME.sub(lambda run: run[0] if run[0] in ".:-" else "_", text).strip("_")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidEvent("the body must be a JSON object (one call, or a batch)")
    return doc


def _common(call: Mapping[str, Any], received_ms: int) -> dict[str, Any]:
    user, anon = _id(call.get("userId")), _id(call.get("anonymousId"))
    if user is None and anon is None:
        raise InvalidEvent("one of userId or anonymousId is required (the shopper)")
    message_id = _id(call.get("messageId")) or _digest(call)
    ts = call.get("timestamp") or call.get("originalTimestamp")
    ts = received_ms if ts is None else _shifted(ts, _skew(call.get("sentAt"), received_ms))
    doc: dict[str, Any] = {"event_id": message_id, "ts": ts}
    if user is not None:
        doc["user_id"] = user
    if anon is not None:
        doc["anon_id"] = anon
    return doc


def _track(call: Mapping[str, Any], doc: dict[str, Any]) -> None:
    name = call.get("event")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent("a track call needs `event`, the event's name")
    kind = type_of(name)
    if not _TYPE.match(kind):
        raise InvalidEvent(
            f"event {name!r} makes the type {kind!r}: a type starts with a letter and has "
            "at most 64 letters, digits and _.:- ; rename the event"
        )
    doc["type"] = kind
    props = dict(_object(call.get("properties"), "properties"))
    fields = PRODUCT_FIELDS + (FEEDBACK_FIELDS if kind in FEEDBACK_TYPES else ())
    for field in fields:
        if field in props:
            doc[field] = _field(field, props.pop(field))
    revenue = props.pop("revenue", None)
    total = props.pop("total", None)
    if revenue is not None or total is not None:
        doc["revenue"] = _number(revenue if revenue is not None else total)
    if "products" in props:
        doc["items"] = _items(props.pop("products"))
    if props:
        doc["props"] = props


def _identify(call: Mapping[str, Any], doc: dict[str, Any]) -> None:
    doc["type"] = "profile"
    traits = _object(call.get("traits"), "traits")
    attributes: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for name, value in traits.items():
        key = snake(name) or name
        (attributes if isinstance(value, _SCALARS) else nested)[key] = value
    birthday = attributes.get("birthday")
    if isinstance(birthday, str) and (date := _ISO_DATE.match(birthday)):
        attributes["birthday"] = f"{date[1]}-{date[2]}"
    timezone = _object(call.get("context"), "context").get("timezone")
    if "timezone" not in attributes and isinstance(timezone, str):
        attributes["timezone"] = timezone
    doc["attributes"] = attributes
    if nested:
        doc["props"] = nested


def _alias(call: Mapping[str, Any], doc: dict[str, Any]) -> None:
    previous = _id(call.get("previousId"))
    if doc.get("user_id") is None or previous is None:
        raise InvalidEvent("an alias needs userId and previousId (the id it links to the user)")
    doc["type"] = CALL_TYPES["alias"]
    doc.pop("anon_id", None)  # the call's own anonymousId is not what it links
    if previous != doc["user_id"]:
        doc["anon_id"] = previous


def _page(call: Mapping[str, Any], doc: dict[str, Any], kind: str) -> None:
    doc["type"] = kind
    props = dict(_object(call.get("properties"), "properties"))
    for field in ("name", "category"):
        if call.get(field) is not None:
            props.setdefault(field, call[field])
    if props:
        doc["props"] = props


def _items(products: Any) -> list[dict[str, Any]]:
    if not isinstance(products, list):
        raise InvalidEvent("properties.products must be a list of products")
    items = []
    for index, product in enumerate(products):
        if not isinstance(product, dict):
            raise InvalidEvent(f"properties.products[{index}] must be an object")
        item = {
            field: _field(field, product[field])
            for field in ("product_id", "category", "price", "quantity")
            if product.get(field) is not None
        }
        items.append(item)
    return items


def _field(field: str, value: Any) -> Any:
    if field in ("price", "quantity"):
        return _number(value, whole=field == "quantity")
    if field in ("product_id", "order_id"):
        return _id(value)
    return value


def _number(value: Any, whole: bool = False) -> Any:
    """Numeric text as a number (``"19.90"`` -> 19.9); anything else unchanged,
    for the validator to judge. A whole float is an int where one is needed."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if whole and isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def _id(value: Any) -> Any:
    """An id: text as it is, a whole number as text; ``None`` and ``""`` are absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"`{name}` must be a JSON object")
    return value


def _skew(sent_at: Any, received_ms: int) -> int:
    """How far the sender's clock is behind ours (``sentAt`` against the time received),
    or 0 within :data:`SKEW_TOLERANCE_MS` or without a readable ``sentAt``."""
    if not isinstance(sent_at, str):
        return 0
    try:
        drift = received_ms - parse_ts(sent_at)
    except ValueError:
        return 0
    return drift if abs(drift) > SKEW_TOLERANCE_MS else 0


def _shifted(ts: Any, skew_ms: int) -> Any:
    """``ts`` moved by ``skew_ms`` (epoch ms), or as it was for the validator to judge."""
    if not skew_ms:
        return ts
    try:
        return (parse_ts(ts) if isinstance(ts, str) else int(ts)) + skew_ms
    except (TypeError, ValueError):
        return ts


def _digest(call: Mapping[str, Any]) -> str:
    """A stable id for a call without ``messageId``: the same call, the same id (its
    ``sentAt``, which a retry changes, left out)."""
    kept = {key: value for key, value in call.items() if key != "sentAt"}
    data = orjson.dumps(kept, option=orjson.OPT_SORT_KEYS)
    return "seg-" + hashlib.blake2b(data, digest_size=16).hexdigest()


def _what(call: Mapping[str, Any], kind: str) -> str:
    name = call.get("event")
    return f"{kind} {name!r}" if kind == "track" and isinstance(name, str) else kind
