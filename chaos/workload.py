"""What a chaos scenario feeds the engine: its rules, a seeded clickstream and poison records.

Rules of this interface:

* :data:`RULES` are the journeys every scenario runs: waits of seconds, so
  reminders fall due while the run goes on, exits on purchase (a reminder
  sent after its cart was bought is an *unexpected* action), a rolling cap,
  and no quiet hours (those would make the result depend on the hour).
  A watched segment (``cart_keeper``: two carts or more, never bought) starts
  :data:`SEGMENT_JOURNEYS` on entering and on leaving it (at the purchase),
  so every scenario also compares segment-triggered actions with replay's,
  across merges of anonymous ids too. Its condition depends on events only
  (no window, ``since`` or ``now``): replay runs recheck instants only up to
  the last event, the live engine also after it, so a segment that changed
  with time alone could differ in the drain.
  :data:`LONGEST_JOURNEY_MS` bounds how long after the last event a timer can
  still fall due.
* :func:`stream` is the seeded generator's clickstream (``clickstream.generator``)
  as an endless series of :class:`Outgoing` records. Each record's ``ts`` is
  filled in when it is sent (the shopper's clock is the wall clock), so the
  log replay compares against is the log as produced, whatever the pace.
* Half the sessions start logged out (:data:`ANON_RATIO`; the generator's
  default is 0.3), and logged-out visitors log in or sign up as they go, so
  every scenario merges anonymous ids into users across shards under its
  faults (``identity.merged`` in the engine's counters).
* With ``poison_share`` > 0, that share of records is poison: one of
  :data:`POISON_KINDS`, each invalid in its own way (bad JSON, missing fields,
  integers of 2**64, a ``ts`` in the year 9999, over 64 KiB, bad UTF-8). A
  poison record carries the identity of a real shopper (the next valid
  event's key), so it shares a batch and a worker with good events. Each is
  unique (``poison-N``), so the dead-letter topic can be matched by bytes.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.load import Template, template
from clickstream.generator import GeneratorConfig, generate_records

__all__ = [
    "ANON_RATIO",
    "LONGEST_JOURNEY_MS",
    "POISON_KINDS",
    "RULES",
    "SEGMENT_JOURNEYS",
    "Outgoing",
    "poison_value",
    "stream",
]

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out, sms: opt_in, onsite: opt_out}
caps:
  - {channel: any, max: 6, per: 1m}
segments:
  cart_keeper: "count(add_to_cart) >= 2 and count(purchase) == 0"
journeys:
  - id: cart
    trigger: {event: add_to_cart, if: "event.price >= 20"}
    key: product_id
    reentry: 30s
    exit:
      - purchase
      - {event: remove_from_cart, if: "event.product_id == entry.product_id"}
    steps:
      - send: onsite
      - wait: 2s
      - send: email
      - wait: 2s
      - send: push
  - id: browse
    trigger:
      event: view_product
      if: "count(view_product, 10m, it.product_id == event.product_id) >= 2"
    key: product_id
    reentry: 1m
    exit:
      - purchase
      - {event: add_to_cart, if: "event.product_id == entry.product_id"}
    steps:
      - wait: 3s
      - send: push
  - id: favorite
    trigger: add_favorite
    key: product_id
    reentry: 1m
    steps:
      - wait: 1s
      - send: onsite
  - id: welcome
    trigger: signup
    steps:
      - send: email
  - id: thanks
    trigger: purchase
    key: order_id
    steps:
      - send: email
      - wait: 3s
      - send: email
  - id: keeper_in
    trigger: {segment: cart_keeper}
    steps:
      - send: onsite
      - wait: 1s
      - send: push
  - id: keeper_out
    trigger: {segment: cart_keeper, on: exit}
    steps:
      - send: email
"""
SEGMENT_JOURNEYS = ("keeper_in", "keeper_out")
LONGEST_JOURNEY_MS = 4_000
ANON_RATIO = 0.5  # share of sessions that start logged out (then log in or sign up)

POISON_KINDS = (
    "bad_json",
    "not_object",
    "missing_type",
    "missing_product",
    "huge_int_props",
    "huge_quantity",
    "huge_attribute",
    "huge_ts",
    "far_future_ts",
    "oversized",
    "bad_utf8",
)
_HUGE = 2**64
_OVERSIZED_BYTES = 80 * 1024  # over the contract's 64 KiB, well under Kafka's 1 MB


@dataclass(frozen=True)
class Outgoing:
    """One record to send: a valid event (``kind`` "") or a poison record."""

    key: bytes
    kind: str = ""
    event: Template | None = None
    number: int = 0  # the poison record's unique number

    def value(self, now_ms: int) -> bytes:
        """The bytes to send now: the event stamped with ``now_ms``, or the poison."""
        if self.event is not None:
            return self.event.value(now_ms)
        return poison_value(self.kind, self.number, self.key.decode(), now_ms)


def stream(
    seed: int, users: int, poison_share: float = 0.0, anon_ratio: float = ANON_RATIO
) -> Iterator[Outgoing]:
    """An endless seeded clickstream, with ``poison_share`` of poison records mixed in
    and ``anon_ratio`` of its sessions starting logged out."""
    cfg = GeneratorConfig(users=users, events=10**12, seed=seed, anon_ratio=anon_ratio)
    mixer = random.Random(seed * 7_919 + 13)
    numbers = itertools.count(1)
    for key, value in generate_records(cfg):
        while poison_share and mixer.random() < poison_share:
            yield Outgoing(key, mixer.choice(POISON_KINDS), number=next(numbers))
        yield Outgoing(key, event=template(key, value))


def poison_value(kind: str, number: int, identity: str, now_ms: int) -> bytes:
    """The bytes of one poison record of ``kind`` (see :data:`POISON_KINDS`)."""
    marker = f"poison-{number}"
    if kind == "bad_json":
        return f'{{"event_id": "{marker}", "type": "view_product", "ts": '.encode()
    if kind == "not_object":
        return json.dumps([marker, "view_product", now_ms]).encode()
    if kind == "bad_utf8":
        head = f'{{"event_id": "{marker}", "type": "login", "ts": {now_ms}, "user_id": "'
        return head.encode() + b'\xff\xfe"}'
    doc: dict[str, Any] = {"event_id": marker, "ts": now_ms, "user_id": identity}
    doc.update(_POISON_FIELDS[kind])
    return json.dumps(doc).encode()  # json, not orjson: it writes integers of any size


_PRODUCT = {"product_id": "p000001", "price": 30.0}
_POISON_FIELDS: dict[str, dict[str, Any]] = {
    "missing_type": {},
    "missing_product": {"type": "add_to_cart", "price": 30.0},
    "huge_int_props": {"type": "spin_wheel", "props": {"prize": _HUGE}},
    "huge_quantity": {"type": "add_to_cart", **_PRODUCT, "quantity": _HUGE},
    "huge_attribute": {"type": "profile", "attributes": {"score": _HUGE}},
    "huge_ts": {"type": "login", "ts": _HUGE},
    "far_future_ts": {"type": "login", "ts": "9999-12-31T23:59:59.000Z"},
    "oversized": {"type": "view_product", **_PRODUCT, "padding": "x" * _OVERSIZED_BYTES},
}
