"""``engine.bought_together``: pairs of an order, the ranking, the bound and its order-independence.

Each test names the rule of the module docstring it checks; orders are real
decoded ``purchase`` events.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.bought_together import MAX_ITEMS, MAX_N, MAX_PARTNERS, BoughtTogether, pairs, top, trim
from engine.events import Event, decode_event

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_serial = itertools.count()


def order(*products: str, **fields: Any) -> Event:
    """A purchase of ``products`` (one line each) through the real decoder."""
    doc = {
        "event_id": f"o{next(_serial)}",
        "type": "purchase",
        "ts": NOW,
        "user_id": "u1",
        "items": [{"product_id": pid} for pid in products],
        **fields,
    }
    return decode_event(json.dumps(doc))


# -- pairs ------------------------------------------------------------------------


def test_pairs_are_every_ordered_pair_of_distinct_products() -> None:
    assert sorted(pairs(order("a", "b", "c"))) == [
        ("a", "b"),
        ("a", "c"),
        ("b", "a"),
        ("b", "c"),
        ("c", "a"),
        ("c", "b"),
    ]


def test_a_product_on_two_lines_counts_once_and_never_with_itself() -> None:
    assert sorted(pairs(order("a", "b", "a", "b"))) == [("a", "b"), ("b", "a")]
    assert pairs(order("a", "a")) == []


def test_an_order_without_items_or_with_one_product_has_no_pairs() -> None:
    no_items = decode_event(
        json.dumps(
            {"event_id": "n", "type": "purchase", "ts": NOW, "user_id": "u1", "order_id": "o"}
        )
    )
    assert pairs(no_items) == []
    assert pairs(order("a")) == []


def test_only_the_first_max_items_distinct_products_of_an_order_count() -> None:
    ids = [f"p{i:03d}" for i in range(MAX_ITEMS + 5)]
    found = pairs(order(ids[0], ids[0], *ids[1:]))  # a repeat does not use up the budget
    counted = {a for a, _ in found}
    assert counted == set(ids[:MAX_ITEMS])
    assert len(found) == MAX_ITEMS * (MAX_ITEMS - 1)


# -- top ----------------------------------------------------------------------------


def test_top_is_most_bought_first_ties_by_product_id() -> None:
    counts = {"z": 3, "b": 1, "a": 1, "m": 3, "c": 2}
    assert top(counts, 10) == ["m", "z", "c", "a", "b"]
    assert top(counts, 2) == ["m", "z"]
    assert top(counts, 0) == []
    assert top(counts, -1) == []
    assert top({}, 3) == []


def test_top_answers_at_most_max_n() -> None:
    counts = {f"p{i:04d}": 1 for i in range(MAX_N + 20)}
    assert top(counts, MAX_N + 20) == sorted(counts)[:MAX_N]


# -- the bound ----------------------------------------------------------------------


def test_trim_leaves_counts_up_to_twice_max_partners_alone() -> None:
    counts = {f"p{i:04d}": i for i in range(2 * MAX_PARTNERS)}
    before = dict(counts)
    assert trim(counts) == []
    assert counts == before


def test_trim_past_the_bound_keeps_the_max_partners_most_frequent() -> None:
    counts = {f"p{i:04d}": 1 + i % 7 for i in range(2 * MAX_PARTNERS + 1)}
    ranked = sorted(counts, key=lambda pid: (-counts[pid], pid))
    kept = {pid: counts[pid] for pid in ranked[:MAX_PARTNERS]}
    dropped = trim(counts)
    assert counts == kept
    assert dropped == ranked[MAX_PARTNERS:]


def test_record_trims_each_product_it_touched() -> None:
    together = BoughtTogether()
    for i in range(2 * MAX_PARTNERS + 1):
        together.record(pairs(order("hub", f"p{i:04d}")))
    together.record(pairs(order("hub", "p0000")))  # p0000 is the hub's most frequent now
    partners = together.counts["hub"]
    assert len(partners) == MAX_PARTNERS
    assert partners["p0000"] == 2
    assert together.top("hub", 2) == ["p0000", "p0001"]
    assert together.counts["p0005"] == {"hub": 1}  # each partner keeps its own counts


def test_with_history_top_before_t_counts_the_orders_before_t_alone() -> None:
    together = BoughtTogether(history=True)
    together.record(pairs(order("a", "b")), 10)
    together.record(pairs(order("a", "c")), 20)
    together.record(pairs(order("a", "c")), 20)  # the same clock: one memory, before both
    together.record(pairs(order("a", "d")), 30)
    assert together.top("a", 5) == ["c", "b", "d"]  # now
    assert together.top("a", 5, before=10) == []
    assert together.top("a", 5, before=11) == ["b"]
    assert together.top("a", 5, before=20) == ["b"]  # orders at T come after a step at T
    assert together.top("a", 5, before=25) == ["c", "b"]
    assert together.top("a", 5, before=31) == ["c", "b", "d"]
    assert together.top("b", 5, before=20) == ["a"]


def test_history_remembers_the_counts_before_a_trim() -> None:
    together = BoughtTogether(history=True)
    for i in range(2 * MAX_PARTNERS):
        together.record(pairs(order("hub", f"p{i:04d}")), i)
    together.record(pairs(order("hub", "late")), 10_000)  # past the bound: a trim
    assert "p0399" not in together.counts["hub"]  # dropped by the trim
    assert together.top("hub", 2) == ["late", "p0000"]  # ties by id
    assert together.top("hub", 2, before=10_000) == ["p0000", "p0001"]
    assert together.history is not None
    clocks, remembered = together.history["hub"]
    assert clocks[-1] == 10_000
    assert len(remembered[-1]) == 2 * MAX_PARTNERS
    assert "p0399" in remembered[-1]


def test_without_history_before_is_ignored() -> None:
    together = BoughtTogether()
    together.record(pairs(order("a", "b")), 10)
    assert together.top("a", 5, before=5) == ["b"]
    assert together.history is None


def test_bought_together_counts_orders_not_lines() -> None:
    together = BoughtTogether()
    for items in (("a", "b"), ("a", "b", "c"), ("a", "c", "c"), ("b", "c"), ("a", "d")):
        together.record(pairs(order(*items)))
    assert together.counts["a"] == {"b": 2, "c": 2, "d": 1}
    assert together.top("a", 3) == ["b", "c", "d"]  # b and c tie: by id
    assert together.top("d", 3) == ["a"]
    assert together.top("unknown", 3) == []


PRODUCTS = st.sampled_from([f"p{i}" for i in range(12)])
ORDERS = st.lists(st.lists(PRODUCTS, min_size=1, max_size=6), max_size=25)


@FUZZ
@given(ORDERS, st.randoms(use_true_random=False), st.integers(0, 25))
def test_below_the_bound_counts_are_exact_whatever_the_order_or_sharding(
    orders: list[list[str]], rnd: Any, cut: int
) -> None:
    expected: dict[str, Counter[str]] = {}
    for items in orders:
        distinct = set(items)
        for a in distinct:
            for b in distinct - {a}:
                expected.setdefault(a, Counter())[b] += 1
    events = [order(*items) for items in orders]
    shuffled = list(events)
    rnd.shuffle(shuffled)
    one, first, second = BoughtTogether(), BoughtTogether(), BoughtTogether()
    for event in shuffled:
        one.record(pairs(event))
    for event in events[:cut]:  # two shards, added up afterwards
        first.record(pairs(event))
    for event in events[cut:]:
        second.record(pairs(event))
    summed: dict[str, Counter[str]] = {}
    for shard in (first, second):
        for product, partners in shard.counts.items():
            summed.setdefault(product, Counter()).update(partners)
    assert {p: dict(c) for p, c in expected.items()} == one.counts
    assert {p: dict(c) for p, c in summed.items()} == one.counts
    for product in one.counts:
        assert one.top(product, 5) == top(summed[product], 5)
