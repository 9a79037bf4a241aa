"""Properties of the journey engine over random event logs and random valid rules.

Rules are built from a small grammar (caps, quiet hours, consent defaults, one
to four journeys with random triggers, keys, re-entry, exits and steps),
rendered to YAML and loaded with ``load_rules``, so they are valid by
construction. Event logs hold a few users over a few days around the 2024
spring-forward day of America/New_York, with consent grants and revocations
(some older decisions arriving after newer ones), time-zone changes, a few
late events and redelivered (duplicate) events.

The oracles recompute what the SPEC requires from the log alone, following the
replay clock (the latest event time so far). To make them exact, every event
time has a millisecond part (1..999) unique in the log, while waits,
quiet-hours ends and the log's start are whole seconds: so a timer never falls
due at the time of an event, and the events applied before an action are those
whose clock is before its ``at`` (plus, for an action run at entry, the events
up to its trigger). Every send uses a template rendering ``entry.event_id``,
which tells which enrollment a sent action belongs to.

Generation costs far more than a run, so one test checks every output property
on each generated run; stop-and-resume has its own test (it also draws cuts).
"""

from __future__ import annotations

import zoneinfo
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.actions import Action
from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine, replay_order
from engine.replay import FOREVER, replay
from engine.rules import templates
from engine.rules.loader import load_rules
from engine.rules.model import Rules, Send
from engine.state import UserState, dumps, loads

Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@pytest.fixture(scope="module", autouse=True)
def _no_wall_clock_budget() -> Any:
    """The templates' wall-clock guard (50 ms, engine.rules.templates.MAX_SECONDS) is the
    one non-deterministic bound, meant for a machine too loaded to keep up: the suite's
    machine can be that loaded, and a property about determinism must not see it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(templates, "MAX_SECONDS", 60.0)
        yield


PROPS = settings(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MINUTE = 60_000
START = parse_ts("2024-03-09T00:00:00Z")  # New York springs forward on 2024-03-10
SPAN_MINUTES = 3 * 24 * 60
CHANNELS = ("email", "sms", "push", "whatsapp")
ZONES = ("UTC", "Europe/Istanbul", "America/New_York", "Asia/Tokyo")
USERS = ("u0", "u1", "u2")
PRODUCTS = ("p0", "p1", "p2")
PRODUCT_TYPES = ("view_product", "add_to_cart", "remove_from_cart", "add_favorite")
EVENT_TYPES = (*PRODUCT_TYPES, "purchase", "consent", "engagement", "profile")
TRIGGERS = (*PRODUCT_TYPES, "purchase", "consent", "profile")
STEP_CONDITIONS = (
    "not exists(purchase, 1h)",
    "cart.count > 0",
    "count(view_product, 1d) >= 2",
    "in_cart(entry.product_id)",
    "engaged('email')",
)
KEYED_EXIT = {"event": "remove_from_cart", "if": "event.product_id == entry.product_id"}
EXITS: tuple[Any, ...] = ("purchase", "add_favorite", "view_product", KEYED_EXIT)

# -- rules --------------------------------------------------------------------------

durations = st.sampled_from(["1m", "5m", "30m", "1h", "3h", "12h"])
cap_windows = st.sampled_from(["30m", "1h", "3h", "1d"])  # sums of waits hit them exactly
# Repeats weight the choices: most channels allowed, most decisions grants, more
# product events than consent, engagement or profile changes.
consent_defaults = st.sampled_from(["opt_out", "opt_out", "opt_out", "opt_in", None])
event_types = st.sampled_from((*EVENT_TYPES, *PRODUCT_TYPES, "add_to_cart", "purchase", "consent"))
users = st.sampled_from((*USERS, USERS[0]))


@st.composite
def sends(draw: st.DrawFn) -> dict[str, Any]:
    channel = draw(st.sampled_from(CHANNELS))
    others = [c for c in CHANNELS if c != channel]
    fallback = draw(st.lists(st.sampled_from(others), unique=True, max_size=2))
    step: dict[str, Any] = {"send": channel, "template": "t"}
    if fallback:
        step["fallback"] = fallback
    return step


waits = durations.map(lambda d: {"wait": d})
simple_steps = st.one_of(waits, sends(), sends(), waits, st.just("exit"))


@st.composite
def branches(draw: st.DrawFn) -> dict[str, Any]:
    step: dict[str, Any] = {
        "if": draw(st.sampled_from(STEP_CONDITIONS)),
        "then": draw(st.lists(simple_steps, max_size=3)),
    }
    otherwise = draw(st.lists(simple_steps, max_size=3))
    if otherwise:
        step["else"] = otherwise
    return step


@st.composite
def journeys(draw: st.DrawFn, index: int) -> dict[str, Any]:
    trigger = draw(st.sampled_from(TRIGGERS))
    journey: dict[str, Any] = {"id": f"j{index}"}
    if trigger in PRODUCT_TYPES and draw(st.booleans()):
        journey["trigger"] = {"event": trigger, "if": "event.price >= 20"}
    else:
        journey["trigger"] = trigger
    if trigger in PRODUCT_TYPES and draw(st.booleans()):
        journey["key"] = "product_id"
    journey["reentry"] = draw(st.sampled_from(["never", "always", "2h", "1d"]))
    exits = draw(st.lists(st.sampled_from(EXITS), max_size=2, unique_by=str))
    if exits:
        journey["exit"] = [dict(e) if isinstance(e, dict) else e for e in exits]  # no aliases
    journey["steps"] = draw(
        st.lists(st.one_of(waits, sends(), sends(), branches()), min_size=1, max_size=5)
    )
    return journey


@st.composite
def clock_times(draw: st.DrawFn) -> str:
    return f"{draw(st.integers(0, 23)):02d}:{draw(st.sampled_from([0, 30])):02d}"


@st.composite
def rules_texts(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {"version": 1, "timezone": draw(st.sampled_from(ZONES))}
    if draw(st.booleans()):
        start = draw(clock_times())
        end = draw(clock_times().filter(lambda t: t != start))
        doc["quiet_hours"] = {"start": start, "end": end}
    consent = {c: d for c in CHANNELS if (d := draw(consent_defaults)) is not None}
    if consent:  # an unlisted channel is opt_in
        doc["consent"] = consent
    caps = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "channel": st.sampled_from(("any", *CHANNELS)),
                    "max": st.integers(1, 3),
                    "per": cap_windows,
                }
            ),
            min_size=1,
            max_size=3,
        )
    )
    if caps:
        doc["caps"] = caps
    doc["templates"] = {"t": {c: {"text": "{{ entry.event_id }}"} for c in CHANNELS}}
    count = draw(st.integers(1, 4))
    doc["journeys"] = [draw(journeys(i)) for i in range(count)]
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False)


# -- event logs -----------------------------------------------------------------------


@st.composite
def event_bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(event_types)
    body: dict[str, Any] = {"type": kind, "user_id": draw(users)}
    if kind in PRODUCT_TYPES:
        body["product_id"] = draw(st.sampled_from(PRODUCTS))
        price = draw(st.sampled_from([None, 10, 25, 50]))
        if price is not None:
            body["price"] = price
    elif kind == "purchase":
        items = draw(st.lists(st.sampled_from(PRODUCTS), unique=True, max_size=2))
        if items:
            body["items"] = [{"product_id": p} for p in items]
    elif kind == "consent":
        body["channel"] = draw(st.sampled_from(CHANNELS))
        body["granted"] = draw(st.sampled_from([True, True, False]))
    elif kind == "engagement":
        body["channel"] = draw(st.sampled_from(CHANNELS))
        body["kind"] = draw(st.sampled_from(["unsubscribed", "clicked", "opened"]))
        body["action_id"] = "a"
    else:
        body["attributes"] = {"timezone": draw(st.sampled_from(ZONES))}
    return body


@st.composite
def event_logs(draw: st.DrawFn) -> list[bytes]:
    """JSONL lines in time order, except a few events that arrive late (after newer
    ones) and redelivered copies, which come later with their original time."""
    bodies = draw(st.lists(event_bodies(), min_size=15, max_size=40))
    size = len(bodies)
    minutes = sorted(draw(st.lists(st.integers(0, SPAN_MINUTES), min_size=size, max_size=size)))
    events = [
        {"event_id": f"e{i}", "ts": START + minute * MINUTE + i + 1, **body}
        for i, (minute, body) in enumerate(zip(minutes, bodies, strict=True))
    ]
    late = dict(draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 8)), max_size=4)))
    placed = [
        ((min(i + late[i], size - 1), 1, i) if i in late else (i, 0, i), e)
        for i, e in enumerate(events)
    ]
    # Older decisions arriving after newer ones: a revocation of a grant, or the reverse.
    older = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 600)), max_size=3))
    for n, (source, back) in enumerate(older):
        newer = events[source]
        if newer["type"] != "consent":
            continue
        minute = max(0, (newer["ts"] - START) // MINUTE - back)
        revision = {
            **newer,
            "event_id": f"r{n}",
            "ts": START + minute * MINUTE + size + n + 1,  # unique ms part
            "granted": not newer["granted"],
        }
        placed.append(((source, 1, size + n), revision))
    copies = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 5)), max_size=4))
    for n, (source, later) in enumerate(copies):
        placed.append(((min(source + later, size - 1), 2, n), events[source]))
    placed.sort(key=lambda p: p[0])
    return [orjson.dumps(e) for _, e in placed]


# -- oracles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """The first occurrence of an event id: its place in the log and the replay clock."""

    index: int
    clock: int
    event: Event


@dataclass
class Case:
    """One generated run: the rules, the log, what the engine applied and the actions."""

    text: str
    rules: Rules
    engine: Engine
    lines: list[bytes]
    seen: list[Seen]  # first occurrences, in log order
    by_id: dict[str, Seen]
    actions: list[Action]

    def known(self, action: Action) -> list[list[Event]]:
        """The possible lists (in log order) of the user's events applied before the action.

        Events whose clock is before ``at`` were applied before it. An event whose clock
        is ``at`` (only an entry-time action shares a time with events) may or may not
        have been: for a sent action the template names the entry event, so the answer
        is exact; otherwise every cut of those events is a candidate.
        """
        mine = [s for s in self.seen if s.event.key == action.user_id]
        sure = [s.event for s in mine if s.clock < action.at]
        block = [s for s in mine if s.clock == action.at]
        if action.content is not None:
            entry = self.by_id[action.content["text"]]
            if entry.clock == action.at:
                return [sure + [s.event for s in block if s.index <= entry.index]]
        return [sure + [s.event for s in block[:n]] for n in range(len(block) + 1)]

    def consented(self, action: Action, channel: str) -> bool | None:
        """The latest decision by event time among the known events, else the rules'
        default; None when the candidates disagree."""
        outcomes = {self._decision(events, channel) for events in self.known(action)}
        return outcomes.pop() if len(outcomes) == 1 else None

    def _decision(self, events: list[Event], channel: str) -> bool:
        decisions = [
            (e.ts, bool(e.granted) if e.type == "consent" else False)
            for e in events
            if e.channel == channel
            and (e.type == "consent" or (e.type == "engagement" and e.kind == "unsubscribed"))
        ]
        if decisions:
            return max(decisions)[1]
        return self.rules.consent.get(channel, "opt_in") == "opt_out"

    def zone(self, action: Action) -> str | None:
        """The user's time zone (the last profile change applied); None if uncertain."""
        outcomes = set()
        for events in self.known(action):
            zone = self.rules.timezone
            for e in events:
                if e.type == "profile" and e.attributes and "timezone" in e.attributes:
                    zone = str(e.attributes["timezone"])
            outcomes.add(zone)
        return outcomes.pop() if len(outcomes) == 1 else None

    def quiet(self, zone: str, at: int) -> bool:
        hours = self.rules.quiet_hours
        if hours is None:
            return False
        local = datetime.fromtimestamp(at / 1000, UTC).astimezone(zoneinfo.ZoneInfo(zone))
        minute = local.hour * 60 + local.minute
        if hours.start < hours.end:
            return hours.start <= minute < hours.end
        return minute >= hours.start or minute < hours.end

    def send_step(self, action: Action) -> Send:
        step = self.engine.programs[action.journey].steps[action.step]
        assert isinstance(step, Send)
        return step


def make_case(text: str, lines: list[bytes]) -> Case:
    rules = load_rules(text, "random.yaml")
    engine = Engine(rules)
    seen: list[Seen] = []
    by_id: dict[str, Seen] = {}
    clock = 0
    for line in lines:
        event = decode_event(line)
        clock = max(clock, event.ts)
        if event.event_id not in by_id:
            by_id[event.event_id] = Seen(len(seen), clock, event)
            seen.append(by_id[event.event_id])
    actions = replay(engine, lines, drain=True)
    return Case(text, rules, engine, lines, seen, by_id, actions)


def cases() -> st.SearchStrategy[Case]:
    return st.builds(make_case, rules_texts(), event_logs())


def sent(case: Case) -> list[Action]:
    return [a for a in case.actions if a.status == "sent"]


def ends(case: Case, journey: str, event: Event, entry: Event) -> bool:
    """Whether ``event`` is an exit of ``journey`` for the enrollment ``entry`` started."""
    for rule in next(j for j in case.rules.journeys if j.id == journey).exits:
        if rule.event == event.type and (
            rule.cond is None or event.product_id == entry.product_id  # the one condition
        ):
            return True
    return False


# -- properties: each a check over one run ----------------------------------------------


def no_send_after_an_exit_of_its_enrollment(case: Case) -> None:
    for action in sent(case):
        assert action.content is not None
        entry = case.by_id[action.content["text"]]
        assert entry.event.key == action.user_id
        assert entry.clock <= action.at
        for later in case.seen[entry.index + 1 :]:
            if later.clock >= action.at:
                break  # applied after the action ran
            assert not (
                later.event.key == action.user_id
                and ends(case, action.journey, later.event, entry.event)
            ), f"{action} sent after {later.event} ended the enrollment of {entry.event}"


def no_rolling_cap_window_ever_holds_more_than_max(case: Case) -> None:
    by_user: dict[str, list[Action]] = defaultdict(list)
    for action in sent(case):
        by_user[action.user_id].append(action)
    for user, actions in by_user.items():
        for cap in case.rules.caps:
            counted = [a.at for a in actions if cap.channel in ("any", a.channel)]
            for now in counted:
                used = sum(1 for t in counted if now - cap.per_ms < t <= now)
                assert used <= cap.max, f"{user}: {cap} holds {used} sends at {now}"


def no_action_inside_quiet_hours(case: Case) -> None:
    for action in case.actions:  # the quiet check comes first, before any suppression
        zone = case.zone(action)
        if zone is not None:
            assert not case.quiet(zone, action.at), (zone, action)


def every_send_has_consent_and_takes_the_first_allowed_channel(case: Case) -> None:
    for action in case.actions:
        step = case.send_step(action)
        allowed = [case.consented(action, c) for c in (step.channel, *step.fallback)]
        if None in allowed:
            continue  # an entry-time suppression whose known events are uncertain
        if action.status == "sent":
            assert case.consented(action, action.channel), action
        if not any(allowed):
            assert (action.status, action.reason, action.channel) == (
                "suppressed",
                "no_consent",
                step.channel,
            ), action
        else:
            first = (step.channel, *step.fallback)[allowed.index(True)]
            assert action.channel == first, action
            assert action.reason != "no_consent", action


def a_capped_send_found_a_full_cap(case: Case) -> None:
    for action in case.actions:
        if action.reason != "capped":
            continue
        others = [
            a for a in sent(case) if a.user_id == action.user_id and a.action_id != action.action_id
        ]
        assert any(
            sum(
                1
                for a in others
                if action.at - cap.per_ms < a.at <= action.at and cap.channel in ("any", a.channel)
            )
            >= cap.max
            for cap in case.rules.caps
            if cap.channel in ("any", action.channel)
        ), action


def action_ids_are_unique(case: Case) -> None:
    ids = [a.action_id for a in case.actions]
    assert len(ids) == len(set(ids))


def replay_is_deterministic(case: Case) -> None:
    again = replay(Engine(load_rules(case.text, "random.yaml")), list(case.lines), drain=True)
    assert again == case.actions


CHECKS = (
    no_send_after_an_exit_of_its_enrollment,
    no_rolling_cap_window_ever_holds_more_than_max,
    no_action_inside_quiet_hours,
    every_send_has_consent_and_takes_the_first_allowed_channel,
    a_capped_send_found_a_full_cap,
    action_ids_are_unique,
    replay_is_deterministic,
)


@pytest.mark.timeout(900)  # room for shrinking a failure; a passing run takes seconds
@settings(PROPS, max_examples=200)
@given(cases())
def test_random_runs_obey_the_spec(case: Case) -> None:
    """Every property on every generated run (generation is the costly part, so the
    checks share the runs)."""
    for check in CHECKS:
        check(case)


def run_with_restarts(text: str, lines: list[bytes], cuts: dict[int, float | None]) -> list[Action]:
    """Like replay(drain=True), but driving Engine.on_event per user and, before line
    ``n`` in ``cuts``, optionally advancing every user to a time before that line's event
    (``cuts[n]`` places it between the clock and the event, or at a timer's due time when
    negative), then serialising every state and going on with a fresh engine."""
    engine = Engine(load_rules(text, "random.yaml"))
    states: dict[str, UserState] = {}
    actions: list[Action] = []
    clock = 0
    for number, line in enumerate([*lines, None]):
        if number in cuts:
            nxt = FOREVER if line is None else max(clock, decode_event(line).ts)
            where = cuts[number]
            if where is not None and nxt != FOREVER:
                dues = sorted(d for s in states.values() if (d := engine.next_due(s)) is not None)
                dues = [d for d in dues if clock <= d < nxt]
                if where < 0 and dues:
                    until = dues[int(-where * len(dues)) % len(dues)]
                else:
                    until = clock + int(abs(where) * (nxt - clock))
                for state in states.values():
                    actions += engine.advance(state, until)
            states = {key: loads(dumps(state)) for key, state in states.items()}
            engine = Engine(load_rules(text, "random.yaml"))
        if line is None:
            break
        event = decode_event(line)
        clock = max(clock, event.ts)
        state = states.setdefault(event.key, UserState(key=event.key))
        actions += engine.on_event(state, event, clock)
    for state in states.values():
        actions += engine.advance(state, FOREVER)
    return replay_order(actions)


@pytest.mark.timeout(900)
@settings(PROPS, max_examples=150)
@given(
    cases(),
    st.dictionaries(
        st.integers(0, 45),
        st.none() | st.floats(-1, 1, allow_nan=False, exclude_max=True),
        min_size=1,
        max_size=3,
    ),
)
def test_stop_and_resume_gives_the_same_actions(case: Case, cuts: dict[int, float | None]) -> None:
    cuts = {min(n, len(case.lines)): where for n, where in cuts.items()}
    assert run_with_restarts(case.text, case.lines, cuts) == case.actions
