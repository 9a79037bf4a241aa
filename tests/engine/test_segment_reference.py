"""The optimised segment watch against a naive reference, on generated logs.

:class:`NaiveWatch` re-evaluates every watched segment at every recheck
instant ``k * segment_recheck`` (no moments of change, no drift, no caches)
and, after an event, every watched segment whose dependency types hold the
event's type (all of them after a user's first event or an identity link),
from a fresh :class:`~engine.rules.context.Context` each time. The engine's
:class:`~engine.segments.SegmentWatch` skips instants and segments that
cannot change; both must give the same memberships after every call and the
same actions, whether a live-like sweep advances users often or not at all,
and whether the state is saved and loaded between events (which drops the
caches kept beside it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.actions import Action
from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine
from engine.rules.context import Context
from engine.rules.loader import load_rules
from engine.rules.model import Rules, Segment
from engine.segments import Change, SegmentWatch, user_clock, watched_names
from engine.state import UserState, dumps, loads

PROPS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
START = parse_ts("2024-05-06T08:00:00Z")
HALF_HOUR = 1_800_000
MOMENT = START + 20 * 3_600_000 + 123  # for `now >= N`: inside the generated span
BASE = "count(purchase, 12h) >= 1"
CONDITIONS = (
    "count(view_product, 1h) >= 2",
    "count(view_product, 3h) > 2",
    "count(view_product, 2h) < 3",
    "2 <= count(search, 30m)",
    "count(view_product, 1h) <= 1",
    "count(view_product, 6h) == 3",
    "count(view_product, 1d, it.price > 50) >= 2",
    "exists(view_product, 45m)",
    "exists(view_category, 1h) and exists(view_product, 1h)",
    "not exists(add_to_cart, 2h)",
    "since(purchase) > 3h",
    "since(view_product) <= 90m",
    "since(login) > 1d or count(search, 2h) >= 1",
    "exists(signup) and count(purchase) == 0",
    "cart.count >= 2",
    "sum(purchase, revenue, 1d) > 100",
    "in_segment('base') and since(purchase) > 2h",
    "not in_segment('base')",
    f"now >= {MOMENT}",
    "(now - now) == 0 and exists(view_product, 1h)",
    "count(add_favorite, 1d) >= 1 and not (since(view_product) > 1h)",
    "count(view_product, 2h) >= 2 or since(view_category) > 5h",
    "exists(view_product, 1h) and count(view_product) < 4",
    "count(view_product, 2h) >= 2 and not exists(view_product, 10m)",
    "since(search) < 20m or count(search, 1h) >= 2",
    "not (count(search, 1h) >= 2) and exists(signup)",
    "count(view_product, 3h, it.product_id == 'p1') >= 1 and cart.count >= 1",
)
TYPES = (
    "view_product",
    "view_product",
    "view_product",
    "view_category",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "search",
    "search",
    "add_favorite",
    "signup",
    "login",
)
GAPS = (1_000, 40_000, 600_000, 1_800_000, 3_600_000, 3 * 3_600_000, 11 * 3_600_000, 86_400_000)


class NaiveWatch(SegmentWatch):
    """The reference: every segment at every instant (see the module docstring)."""

    def __init__(self, rules: Rules, names: Iterable[str]) -> None:
        super().__init__(rules, names)
        self.timed = self.watched

    def after_event(
        self, state: UserState, event: Event, now: int, ctx: Context | None = None
    ) -> list[Change]:
        if state.events == 1 or (event.user_id and event.anon_id):
            due: Iterable[Segment] = self.watched
        else:
            due = [s for s in self.watched if s.deps.every_type or event.type in s.deps.types]
        return self._evaluate_all(state, due, now)

    def next_recheck(self, state: UserState, until: int) -> int | None:
        instant = (user_clock(state) // self.recheck + 1) * self.recheck
        return instant if instant <= until else None

    def recheck_at(self, state: UserState, at: int) -> list[Change]:
        return self._evaluate_all(state, self.watched, at)

    def _evaluate_all(self, state: UserState, due: Iterable[Segment], now: int) -> list[Change]:
        changes: list[Change] = []
        for seg in due:
            inside = seg.cond.holds(Context(state, now, rfm=self.rfm))
            if inside and seg.name not in state.segments:
                state.segments[seg.name] = now
                changes.append((seg.name, "enter"))
            elif not inside and seg.name in state.segments:
                del state.segments[seg.name]
                changes.append((seg.name, "exit"))
        return changes


def naive_engine(rules: Rules) -> Engine:
    engine = Engine(rules)
    engine.watch = NaiveWatch(rules, watched_names(rules))
    engine.timed = True
    return engine


def rules_text(conditions: list[str], recheck: str) -> str:
    segments = {"base": BASE, **{f"s{i}": c for i, c in enumerate(conditions)}}
    journeys: list[dict[str, Any]] = []
    for name in segments:
        for on in ("enter", "exit"):
            journeys.append(
                {
                    "id": f"{name}_{on}",
                    "trigger": {"segment": name, "on": on},
                    "reentry": "always",
                    "steps": [{"send": "email"}],
                }
            )
    doc = {
        "version": 1,
        "consent": {"email": "opt_out"},
        "segment_recheck": recheck,
        "segments": segments,
        "journeys": journeys,
    }
    return yaml.safe_dump(doc, sort_keys=False)


@st.composite
def logs(draw: st.DrawFn) -> list[Event]:
    ts = START
    events = []
    for serial in range(draw(st.integers(min_value=1, max_value=45))):
        ts += draw(st.sampled_from(GAPS)) + draw(st.integers(min_value=0, max_value=999))
        if draw(st.booleans()):  # on the half-hour grid, or 1 ms either side: boundaries
            ts = ts // HALF_HOUR * HALF_HOUR + draw(st.sampled_from((-1, 0, 1)))
        kind = draw(st.sampled_from(TYPES))
        body: dict[str, Any] = {
            "event_id": f"e{serial}",
            "type": kind,
            "ts": ts - draw(st.sampled_from((0, 0, 0, 5_000))),  # a few slightly late
            "user_id": draw(st.sampled_from(("u0", "u0", "u1", "u2"))),
        }
        if kind in ("view_product", "add_to_cart", "remove_from_cart", "add_favorite"):
            body["product_id"] = draw(st.sampled_from(("p0", "p1", "p2", "p3")))
            body["price"] = draw(st.sampled_from((10, 60, 120)))
        elif kind == "purchase":
            body["revenue"] = draw(st.sampled_from((30, 80, 150)))
        elif kind == "search":
            body["query"] = "q"
        elif kind == "view_category":
            body["category"] = "c"
        events.append(decode_event(orjson.dumps(body)))
    return events


def rows(actions: Iterable[Action]) -> list[tuple[int, str, str]]:
    return [(a.at, a.user_id, a.journey) for a in actions]


@PROPS
@given(
    conditions=st.lists(st.sampled_from(CONDITIONS), min_size=1, max_size=6, unique=True),
    recheck=st.sampled_from(("30m", "1h", "2h")),
    events=logs(),
    sweep=st.sampled_from((None, 7 * 60_000, 3_600_000, 5 * 3_600_000)),
    reload=st.booleans(),
)
def test_the_watch_finds_what_evaluating_everything_everywhere_finds(
    conditions: list[str], recheck: str, events: list[Event], sweep: int | None, reload: bool
) -> None:
    rules = load_rules(rules_text(conditions, recheck), "reference.yaml")
    fast, naive = Engine(rules), naive_engine(rules)
    fast_states: dict[str, UserState] = {}
    naive_states: dict[str, UserState] = {}
    sweeps = iter(range(START, events[-1].ts + 2 * 86_400_000, sweep or 1))
    next_sweep = next(sweeps) if sweep else None
    clock = 0
    for e in events:
        while next_sweep is not None and next_sweep < e.ts:
            for user in fast_states:  # a live sweep advances idle shoppers
                got = fast.advance(fast_states[user], next_sweep)
                assert rows(got) == rows(naive.advance(naive_states[user], next_sweep))
                assert fast_states[user].segments == naive_states[user].segments
            next_sweep = next(sweeps, None)
        clock = max(clock, e.ts)
        user = e.key
        if reload and user in fast_states:
            fast_states[user] = loads(dumps(fast_states[user]))  # the caches go
        state = fast_states.setdefault(user, UserState(key=user))
        reference = naive_states.setdefault(user, UserState(key=user))
        assert rows(fast.on_event(state, e, clock)) == rows(naive.on_event(reference, e, clock))
        assert state.segments == reference.segments, e
    end = clock + 2 * 86_400_000
    for user, state in fast_states.items():
        assert rows(fast.advance(state, end)) == rows(naive.advance(naive_states[user], end))
        assert state.segments == naive_states[user].segments


def test_a_member_whose_moment_has_passed_is_evaluated_at_the_next_event() -> None:
    """A new view cannot keep a member of a falling segment in it when the window
    emptied before the view: the exit is at the view, as evaluating shows."""
    text = rules_text(["count(view_product, 1h) >= 3"], "1h")
    views = [START + m * 60_000 for m in (60, 61, 62, 150)]  # 09:00, 09:01, 09:02, 10:30
    log = [
        decode_event(orjson.dumps({"event_id": f"v{i}", "type": "view_product", "ts": ts,
                                   "user_id": "u0", "product_id": "p0"}))
        for i, ts in enumerate(views)
    ]  # fmt: skip
    for engine in (Engine(load_rules(text, "r.yaml")), naive_engine(load_rules(text, "r.yaml"))):
        state = UserState(key="u0")
        out = [a for e in log for a in engine.on_event(state, e, e.ts)]
        assert rows(out) == [(views[2], "u0", "s0_enter"), (views[3], "u0", "s0_exit")]
