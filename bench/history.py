"""Long history: the state an active shopper's rollups add, and what recording costs.

The goal (issue 13): the all-time rollups and monthly buckets of
:mod:`engine.history` add at most 1 KiB of msgpack state per active shopper with
two years of history.

An active shopper, calibrated on the REES46 sample in ``/work/shared/datasets``
(read in place, never copied): the sample covers 2.6 hours, so it gives the mix
and the shapes, not a monthly rate. Per purchase it has 82.9 product views and
0.82 cart adds (9,784 / 97 / 118 rows); purchases fall in its ``category_code``
distribution (46.6% smartphones, 22% without a code) at its prices (median
174.76). The monthly rate is the DOMAIN digest's "frequent buyer" bar, two
purchases a month, every month for 24 months: so 2 purchases, ~166 views and
~2 cart adds a month, plus a login a week. :data:`PROFILE` holds these figures;
``--calibrate`` measures them again from the file and prints both.

``python -m bench.history`` (or ``tetik bench history``) builds that shopper's
two years through :func:`engine.state.apply` (rules' time zone
Europe/Istanbul), and prints the msgpack size the rollups add to its state
(the state with them minus the state without), the size of the rollups alone,
and the time :func:`engine.history.record` takes per event. A unit test
(``tests/engine/test_history.py``) asserts the size bound on the same profile,
since a size is deterministic; timings are only measured here.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.events import Event
from engine.history import record
from engine.state import UserState, apply, dumps, prune
from engine.windows import DEFAULT_CONFIG, WindowConfig, with_timezone

REES46 = Path("/work/shared/datasets/rees46_oct2019_sample.csv")
DAY_MS = 86_400_000
START = 1_664_582_400_000  # 2022-10-01T00:00:00Z: two years up to 2024-10-01
ZONE = "Europe/Istanbul"
BUDGET = 1024


@dataclass(frozen=True)
class Profile:
    """An active shopper's month (see the module docstring)."""

    purchases_per_month: float = 2.0
    views_per_purchase: float = 82.9  # REES46 sample: 9,784 views / 118 purchases
    carts_per_purchase: float = 0.82  # REES46 sample: 97 cart adds / 118 purchases
    logins_per_month: int = 4
    months: int = 24
    # REES46 sample purchases by category_code ("" = none), counts out of 118.
    categories: dict[str, int] = field(
        default_factory=lambda: {
            "electronics.smartphone": 55,
            "": 26,
            "electronics.audio.headphone": 9,
            "computers.notebook": 4,
            "electronics.clocks": 4,
            "electronics.telephone": 2,
            "appliances.kitchen.washer": 2,
            "furniture.bathroom.toilet": 1,
            "appliances.environment.air_heater": 1,
            "auto.accessories.videoregister": 1,
            "computers.peripherals.printer": 1,
            "construction.tools.saw": 1,
        }
    )
    median_price: float = 174.76


PROFILE = Profile()


def shopper_events(profile: Profile = PROFILE, seed: int = 7) -> list[Event]:
    """The shopper's events over ``profile.months`` months, in time order."""
    rng = random.Random(seed)
    cats, weights = zip(*profile.categories.items(), strict=True)
    month_ms = 30 * DAY_MS
    purchases = round(profile.purchases_per_month * profile.months)
    kinds = (
        ["purchase"] * purchases
        + ["view_product"] * round(purchases * profile.views_per_purchase)
        + ["add_to_cart"] * round(purchases * profile.carts_per_purchase)
        + ["login"] * (profile.logins_per_month * profile.months)
    )
    span = profile.months * month_ms
    stamped = sorted((START + rng.randrange(span), kind) for kind in kinds)
    events = []
    for serial, (ts, kind) in enumerate(stamped):
        category = rng.choices(cats, weights)[0] or None
        price = round(profile.median_price * rng.lognormvariate(0, 0.8), 2)
        fields: dict[str, Any] = {"category": category}
        if kind == "purchase":
            fields["revenue"] = price
        elif kind != "login":
            fields.update(product_id=f"p{rng.randrange(5000)}", price=price)
        events.append(Event(event_id=f"e{serial}", type=kind, ts=ts, user_id="u", **fields))
    return events


def build(profile: Profile = PROFILE, seed: int = 7) -> UserState:
    """The shopper's state after its two years, pruned at the end as live would."""
    config = with_timezone(DEFAULT_CONFIG, ZONE)
    state = UserState(key="u")
    events = shopper_events(profile, seed)
    for event in events:
        assert apply(state, event, event.ts, config) == "applied"
    prune(state, events[-1].ts, config)
    return state


def added_bytes(state: UserState) -> tuple[int, int]:
    """(bytes the rollups add to the state's msgpack, bytes of the rollups alone)."""
    without = msgspec.structs.replace(state, rollups={})
    alone = len(msgspec.msgpack.encode(state.rollups))
    return len(dumps(state)) - len(dumps(without)), alone


def record_cost(events: list[Event], config: WindowConfig, repeats: int = 5) -> float:
    """Best µs per event of :func:`engine.history.record` alone."""
    best = float("inf")
    for _ in range(repeats):
        rollups: dict[str, Any] = {}
        start = time.perf_counter()
        for event in events:
            record(rollups, event.type, event.ts, event.category, event.revenue, config)
        best = min(best, time.perf_counter() - start)
    return best / len(events) * 1e6


def calibrate(path: Path = REES46) -> dict[str, Any]:
    """The REES46 figures the profile uses, measured from the file in place."""
    kinds: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            kinds[row["event_type"]] += 1
            if row["event_type"] == "purchase":
                categories[row["category_code"]] += 1
    purchases = kinds["purchase"] or 1
    return {
        "rows": sum(kinds.values()),
        "views_per_purchase": round(kinds["view"] / purchases, 2),
        "carts_per_purchase": round(kinds["cart"] / purchases, 2),
        "purchase_categories": dict(categories.most_common(12)),
    }


def bench_history(*, quick: bool = False) -> dict[str, Any]:
    """Measure and print; the result goes into ``tetik bench``'s JSON."""
    state = build()
    added, alone = added_bytes(state)
    events = shopper_events()
    config = with_timezone(DEFAULT_CONFIG, ZONE)
    cost = record_cost(events, config, 3 if quick else 7)
    months = {name: len(roll.months) for name, roll in state.rollups.items()}
    print(f"active shopper, {PROFILE.months} months: {len(events):,} events, months kept {months}")
    print(f"rollups add {added:,} bytes of msgpack state ({alone:,} alone); budget {BUDGET:,}")
    print(f"engine.history.record: {cost:.2f} µs per event")
    return {
        "events": len(events),
        "added_bytes": added,
        "rollup_bytes": alone,
        "budget": BUDGET,
        "record_us_per_event": cost,
        "months": months,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    parser.add_argument("--calibrate", action="store_true", help="measure REES46 again")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.calibrate:
        if not REES46.exists():
            print(f"no {REES46}: the profile's recorded figures stand", file=sys.stderr)
        else:
            print(f"REES46 sample: {calibrate()}")
            print(f"profile: {PROFILE}")
    result = bench_history(quick=args.quick)
    return 0 if result["added_bytes"] <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
