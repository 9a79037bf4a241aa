"""The abandoned-cart journey that ``tetik bench e2e`` runs on every system.

tetik runs it from :data:`RULES`; the hand-written baseline
(:mod:`bench.handwritten`) implements the same behaviour by hand, so both do
the same work on the same input:

* entry: ``add_to_cart`` with ``price >= MIN_PRICE``, one enrollment per
  (identity, product) ever (``reentry: never``);
* at once: an ``onsite`` reminder (an event-caused action, whose latency is
  the end-to-end figure), then after :data:`WAIT_MS` an ``email`` (a
  timer-fired action);
* exit: any ``purchase``, or ``remove_from_cart`` of the same product;
* consent: ``email`` and ``onsite`` are opt-out (sent unless the user's last
  ``consent`` event for that channel was ``granted: false``; then the send is
  ``suppressed`` with reason ``no_consent``).

No quiet hours and no caps: those would make the figures depend on the hour
the bench runs at.
"""

from __future__ import annotations

JOURNEY = "abandoned_cart"
MIN_PRICE = 20
WAIT_MS = 3_000

RULES = f"""version: 1
consent: {{email: opt_out, onsite: opt_out}}
journeys:
  - id: {JOURNEY}
    trigger: {{event: add_to_cart, if: "event.price >= {MIN_PRICE}"}}
    key: product_id
    reentry: never
    exit:
      - purchase
      - {{event: remove_from_cart, if: "event.product_id == entry.product_id"}}
    steps:
      - send: onsite
      - wait: {WAIT_MS // 1000}s
      - send: email
"""
