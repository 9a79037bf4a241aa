"""Journey semantics (SPEC sections 2-5), one scenario per rule.

Each test loads a small inline rules file, builds events as dicts (through
orjson and the real decoder) and runs them through ``replay`` or directly
through :class:`Engine`; the expected actions are worked out by hand from the
SPEC. Unless a test says otherwise, times are UTC and the rules' zone is UTC.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from engine.actions import Action
from engine.events import Event, decode_event, parse_ts
from engine.journeys import Engine
from engine.replay import replay
from engine.rules.loader import load_rules
from engine.rules.model import Rules
from engine.state import UserState

Row = tuple[int, str, str, str, str, str, str | None]  # at, user, journey, step, channel, ...
_serial = itertools.count()
DAY = 86_400_000


def load(text: str) -> Rules:
    return load_rules(textwrap.dedent(text), "test.yaml")


def at(text: str) -> int:
    """Epoch ms of an RFC 3339 time with offset."""
    return parse_ts(text)


def utc(hm: str, day: int = 0) -> int:
    """``HH:MM`` UTC on 2024-05-06 (a Monday) plus ``day`` days."""
    return parse_ts(f"2024-05-06T{hm}:00Z") + day * DAY


def doc(
    event_type: str, ts: int | str, user: str = "u1", eid: str | None = None, **fields: Any
) -> bytes:
    """One event as a JSON line."""
    body = {"event_id": eid or f"e{next(_serial)}", "type": event_type, "ts": ts, "user_id": user}
    return orjson.dumps({**body, **fields})


def event(event_type: str, ts: int | str, user: str = "u1", **fields: Any) -> Event:
    return decode_event(doc(event_type, ts, user, **fields))


def row(action: Action) -> Row:
    return (
        action.at,
        action.user_id,
        action.journey,
        action.step,
        action.channel,
        action.status,
        action.reason,
    )


def run(
    rules: Rules, lines: Iterable[bytes], *, until: int | None = None, drain: bool = True
) -> list[Row]:
    """Every action (sent and suppressed) of a replay, as rows."""
    return [row(a) for a in replay(Engine(rules), list(lines), until=until, drain=drain)]


# -- exits ----------------------------------------------------------------------

EXIT_RULES = """
    version: 1
    consent: {email: opt_out}
    journeys:
      - id: cart
        trigger: add_to_cart
        exit:
          - purchase
          - {event: remove_from_cart, if: "event.product_id == entry.product_id"}
        steps:
          - send: email
          - wait: 1h
          - send: email
          - wait: 1h
          - send: email
    """


def test_exit_cancels_every_pending_step() -> None:
    rules = load(EXIT_RULES)
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("purchase", utc("10:30")),
    ]
    assert run(rules, lines) == [
        (utc("10:00"), "u1", "cart", "0", "email", "sent", None),
    ]


def test_exit_ends_the_enrollment_in_the_state() -> None:
    engine = Engine(load(EXIT_RULES))
    state = UserState(key="u1")
    engine.on_event(state, event("add_to_cart", utc("10:00"), product_id="p1"), utc("10:00"))
    assert engine.next_due(state) == utc("11:00")
    assert engine.on_event(state, event("purchase", utc("10:30")), utc("10:30")) == []
    assert state.enrollments == {}
    assert engine.next_due(state) is None
    assert engine.advance(state, utc("23:59")) == []


def test_a_step_due_at_the_exit_events_time_fires_before_the_exit() -> None:
    """Timers due at or before T fire before the event at T is applied."""
    rules = load(EXIT_RULES)
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("purchase", utc("11:00")),
    ]
    assert run(rules, lines) == [
        (utc("10:00"), "u1", "cart", "0", "email", "sent", None),
        (utc("11:00"), "u1", "cart", "2", "email", "sent", None),
    ]


def test_an_exit_if_that_does_not_match_the_entry_keeps_the_enrollment() -> None:
    rules = load(EXIT_RULES)
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:05"), product_id="p2"),  # no second entry: one active
        doc("remove_from_cart", utc("10:10"), product_id="p2"),  # entry is p1: no exit
    ]
    assert run(rules, lines) == [
        (utc("10:00"), "u1", "cart", "0", "email", "sent", None),
        (utc("11:00"), "u1", "cart", "2", "email", "sent", None),
        (utc("12:00"), "u1", "cart", "4", "email", "sent", None),
    ]


def test_an_exit_if_that_matches_the_entry_ends_the_enrollment() -> None:
    rules = load(EXIT_RULES)
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("remove_from_cart", utc("10:10"), product_id="p1"),
    ]
    assert run(rules, lines) == [(utc("10:00"), "u1", "cart", "0", "email", "sent", None)]


# -- keyed enrollments ----------------------------------------------------------

KEYED_RULES = """
    version: 1
    consent: {email: opt_out}
    templates:
      reminder:
        email: {text: "{{ entry.product_id }}"}
    journeys:
      - id: cart
        trigger: add_to_cart
        key: product_id
        exit:
          - purchase
          - {event: remove_from_cart, if: "event.product_id == entry.product_id"}
        steps:
          - wait: 30m
          - send: email
            template: reminder
          - wait: 1h
          - send: email
            template: reminder
    """


def _keyed(lines: list[bytes]) -> list[tuple[int, str, str]]:
    actions = replay(Engine(load(KEYED_RULES)), lines, drain=True)
    assert all(a.status == "sent" for a in actions)
    return [(a.at, a.step, (a.content or {})["text"]) for a in actions]


def test_keyed_enrollments_run_independently() -> None:
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:05"), product_id="p2"),
    ]
    assert _keyed(lines) == [
        (utc("10:30"), "1", "p1"),
        (utc("10:35"), "1", "p2"),
        (utc("11:30"), "3", "p1"),
        (utc("11:35"), "3", "p2"),
    ]


def test_a_keyed_exit_if_ends_only_that_products_enrollment() -> None:
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:05"), product_id="p2"),
        doc("remove_from_cart", utc("10:40"), product_id="p1"),
    ]
    assert _keyed(lines) == [
        (utc("10:30"), "1", "p1"),
        (utc("10:35"), "1", "p2"),
        (utc("11:35"), "3", "p2"),  # p1's step 3 (11:30) never runs
    ]


def test_a_plain_exit_ends_every_keyed_enrollment() -> None:
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:05"), product_id="p2"),
        doc("purchase", utc("10:32")),
    ]
    assert _keyed(lines) == [(utc("10:30"), "1", "p1")]


def test_the_same_key_does_not_enroll_twice_while_active() -> None:
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:10"), product_id="p1"),  # reentry never, and active
    ]
    assert _keyed(lines) == [(utc("10:30"), "1", "p1"), (utc("11:30"), "3", "p1")]


# -- re-entry ---------------------------------------------------------------------


def reentry_rules(reentry: str | None) -> Rules:
    line = f"reentry: {reentry}" if reentry else ""
    return load(
        f"""
        version: 1
        consent: {{email: opt_out}}
        journeys:
          - id: promo
            trigger: view_product
            {line}
            exit: [purchase]
            steps:
              - send: email
              - wait: 2h
              - send: email
        """
    )


def _entries(rules: Rules, times: list[int], more: tuple[bytes, ...] = ()) -> list[int]:
    """When the journey's first step ran (one per enrollment)."""
    lines = [doc("view_product", t, product_id="p1") for t in times] + list(more)
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    return [r[0] for r in run(rules, lines) if r[3] == "0"]


@pytest.mark.parametrize("reentry", [None, "never"])
def test_reentry_never_is_the_default_and_means_once_ever(reentry: str | None) -> None:
    rules = reentry_rules(reentry)
    assert _entries(rules, [utc("10:00"), utc("13:00"), utc("10:00", day=30)]) == [utc("10:00")]


def test_reentry_never_holds_after_an_exit_too() -> None:
    rules = reentry_rules("never")
    exit_ = (doc("purchase", utc("10:30")),)
    assert _entries(rules, [utc("10:00"), utc("11:00")], exit_) == [utc("10:00")]


def test_reentry_duration_waits_that_long_after_the_previous_entry() -> None:
    rules = reentry_rules("7d")
    times = [utc("10:00"), utc("10:00", day=3), utc("10:00", day=8), utc("10:00", day=10)]
    assert _entries(rules, times) == [utc("10:00"), utc("10:00", day=8)]


def test_reentry_always_enters_again_only_once_the_previous_enrollment_ended() -> None:
    rules = reentry_rules("always")
    # 10:00 enters (runs until 12:00); 11:00 is ignored (active); 12:30 enters again.
    times = [utc("10:00"), utc("11:00"), utc("12:30")]
    assert _entries(rules, times) == [utc("10:00"), utc("12:30")]
    # At 12:00 the last step (due 12:00) runs first, ending the enrollment: it enters.
    assert _entries(rules, [utc("10:00"), utc("12:00")]) == [utc("10:00"), utc("12:00")]


def test_reentry_always_enters_again_right_after_an_exit() -> None:
    rules = reentry_rules("always")
    exit_ = (doc("purchase", utc("10:30")),)
    assert _entries(rules, [utc("10:00"), utc("10:45")], exit_) == [utc("10:00"), utc("10:45")]


def test_a_purchase_can_end_an_enrollment_and_start_one_of_the_same_journey() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out}
        journeys:
          - id: winback
            trigger: purchase
            reentry: always
            exit: [purchase]
            steps:
              - wait: 1d
              - send: email
        """
    )
    lines = [doc("purchase", utc("10:00")), doc("purchase", utc("12:00"))]
    assert run(rules, lines) == [(utc("12:00", day=1), "u1", "winback", "1", "email", "sent", None)]


# -- quiet hours ------------------------------------------------------------------


def quiet_rules(timezone: str = "UTC", start: str = "22:00", end: str = "09:00") -> Rules:
    return load(
        f"""
        version: 1
        timezone: {timezone}
        quiet_hours: {{start: "{start}", end: "{end}"}}
        consent: {{email: opt_out}}
        journeys:
          - id: hello
            trigger: signup
            reentry: always
            steps:
              - send: email
        """
    )


def sends_at(rules: Rules, lines: list[bytes]) -> dict[str, int]:
    rows = run(rules, lines)
    assert all(r[5] == "sent" for r in rows)
    return {r[1]: r[0] for r in rows}


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (utc("23:30"), utc("09:00", day=1)),  # across midnight: next morning
        (utc("22:00"), utc("09:00", day=1)),  # start is inside
        (utc("02:00"), utc("09:00")),  # after midnight: this morning
        (utc("08:59"), utc("09:00")),
        (utc("09:00"), utc("09:00")),  # end is outside: [start, end)
        (utc("21:59"), utc("21:59")),
        (utc("12:00"), utc("12:00")),
    ],
    ids=["23:30", "22:00", "02:00", "08:59", "09:00", "21:59", "12:00"],
)
def test_quiet_hours_across_midnight(when: int, expected: int) -> None:
    assert sends_at(quiet_rules(), [doc("signup", when)]) == {"u1": expected}


def test_quiet_hours_that_do_not_span_midnight() -> None:
    rules = quiet_rules(start="12:00", end="14:00")
    lines = [
        doc("signup", utc("11:59"), "a"),
        doc("signup", utc("12:00"), "b"),
        doc("signup", utc("13:59"), "c"),
        doc("signup", utc("14:00"), "d"),
    ]
    assert sends_at(rules, lines) == {
        "a": utc("11:59"),
        "b": utc("14:00"),
        "c": utc("14:00"),
        "d": utc("14:00"),
    }


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (
            "2024-05-06T13:30:00Z",  # Tokyo 22:30 (quiet), New York 09:30, Istanbul 16:30
            {
                "tokyo": at("2024-05-07T09:00:00+09:00"),
                "newyork": at("2024-05-06T13:30:00Z"),
                "default": at("2024-05-06T13:30:00Z"),
            },
        ),
        (
            "2024-05-06T04:00:00Z",  # Tokyo 13:00, New York 00:00 (quiet), Istanbul 07:00 (quiet)
            {
                "tokyo": at("2024-05-06T04:00:00Z"),
                "newyork": at("2024-05-06T09:00:00-04:00"),
                "default": at("2024-05-06T09:00:00+03:00"),
            },
        ),
    ],
    ids=["13:30Z", "04:00Z"],
)
def test_quiet_hours_in_the_users_time_zone(instant: str, expected: dict[str, int]) -> None:
    rules = quiet_rules(timezone="Europe/Istanbul")
    profile_ts = at("2024-05-01T00:00:00Z")
    lines = [
        doc("profile", profile_ts, "tokyo", attributes={"timezone": "Asia/Tokyo"}),
        doc("profile", profile_ts, "newyork", attributes={"timezone": "America/New_York"}),
        doc("profile", profile_ts, "default", attributes={"first_name": "Ada"}),
        doc("signup", instant, "tokyo"),
        doc("signup", instant, "newyork"),
        doc("signup", instant, "default"),
    ]
    assert sends_at(rules, lines) == expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        # Spring forward (02:00 -> 03:00): 23:30 EST to 09:00 EDT is 8.5 h, not 9.5 h.
        ("2024-03-09T23:30:00-05:00", "2024-03-10T09:00:00-04:00"),
        ("2024-03-10T01:30:00-05:00", "2024-03-10T09:00:00-04:00"),
        ("2024-03-10T08:59:00-04:00", "2024-03-10T09:00:00-04:00"),
        ("2024-03-10T09:00:00-04:00", "2024-03-10T09:00:00-04:00"),
        # Fall back (02:00 -> 01:00): 23:30 EDT to 09:00 EST is 10.5 h.
        ("2024-11-02T23:30:00-04:00", "2024-11-03T09:00:00-05:00"),
        ("2024-11-03T01:30:00-04:00", "2024-11-03T09:00:00-05:00"),  # first 01:30
        ("2024-11-03T01:30:00-05:00", "2024-11-03T09:00:00-05:00"),  # second 01:30
        ("2024-11-03T21:59:00-05:00", "2024-11-03T21:59:00-05:00"),
    ],
)
def test_quiet_hours_on_daylight_saving_days(when: str, expected: str) -> None:
    rules = quiet_rules(timezone="America/New_York")
    assert sends_at(rules, [doc("signup", when)]) == {"u1": at(expected)}


def test_quiet_hours_ending_inside_the_spring_forward_gap() -> None:
    """02:30 does not exist on 2024-03-10 in New York: the send goes out at 03:30 EDT."""
    rules = quiet_rules(timezone="America/New_York", start="22:00", end="02:30")
    when = at("2024-03-09T23:00:00-05:00")
    assert sends_at(rules, [doc("signup", when)]) == {"u1": at("2024-03-10T03:30:00-04:00")}


# -- after a deferral -------------------------------------------------------------

DEFERRAL_RULES = """
    version: 1
    quiet_hours: {start: "22:00", end: "09:00"}
    consent: {email: opt_out, push: opt_in}
    journeys:
      - id: nudge
        trigger: add_to_cart
        steps:
          - send: push
          - wait: 1h
          - send: email
    """


def test_after_a_deferral_consent_is_checked_again() -> None:
    rules = load(DEFERRAL_RULES)
    lines = [
        doc("consent", utc("20:00"), channel="push", granted=True),
        doc("add_to_cart", utc("23:00"), product_id="p1"),  # quiet: push deferred to 09:00
        doc("consent", utc("02:00", day=1), channel="push", granted=False),
    ]
    assert run(rules, lines) == [
        (utc("09:00", day=1), "u1", "nudge", "0", "push", "suppressed", "no_consent"),
        (utc("10:00", day=1), "u1", "nudge", "2", "email", "sent", None),
    ]


def test_after_a_deferral_an_unsubscribe_is_seen_too() -> None:
    rules = load(DEFERRAL_RULES)
    lines = [
        doc("consent", utc("20:00"), channel="push", granted=True),
        doc("add_to_cart", utc("23:00"), product_id="p1"),
        doc("engagement", utc("03:00", day=1), action_id="x", channel="push", kind="unsubscribed"),
    ]
    assert run(rules, lines)[0] == (
        utc("09:00", day=1),
        "u1",
        "nudge",
        "0",
        "push",
        "suppressed",
        "no_consent",
    )


def test_a_wait_counts_from_the_deferred_send() -> None:
    rules = load(DEFERRAL_RULES)
    lines = [
        doc("consent", utc("20:00"), channel="push", granted=True),
        doc("add_to_cart", utc("23:00"), product_id="p1"),
    ]
    assert run(rules, lines) == [
        (utc("09:00", day=1), "u1", "nudge", "0", "push", "sent", None),
        (utc("10:00", day=1), "u1", "nudge", "2", "email", "sent", None),  # not 00:00 -> 09:00
    ]


def test_a_deferred_send_keeps_its_action_id_and_runs_once() -> None:
    engine = Engine(load(DEFERRAL_RULES))
    state = UserState(key="u1")
    engine.on_event(
        state, event("consent", utc("20:00"), channel="push", granted=True), utc("20:00")
    )
    assert (
        engine.on_event(state, event("add_to_cart", utc("23:00"), product_id="p1"), utc("23:00"))
        == []
    )
    assert engine.next_due(state) == utc("09:00", day=1)
    assert engine.advance(state, utc("08:59", day=1)) == []
    (first,) = engine.advance(state, utc("09:00", day=1))
    assert (first.at, first.step, first.status) == (utc("09:00", day=1), "0", "sent")
    assert engine.advance(state, utc("09:30", day=1)) == []


def test_after_a_deferral_quiet_hours_are_checked_again_in_the_users_zone_then() -> None:
    """Deferred to 09:00 UTC; meanwhile the user moved to New York, where it is 05:00."""
    rules = load(DEFERRAL_RULES)
    lines = [
        doc("consent", utc("20:00"), channel="push", granted=True),
        doc("add_to_cart", utc("23:00"), product_id="p1"),
        doc("profile", utc("01:00", day=1), attributes={"timezone": "America/New_York"}),
    ]
    assert run(rules, lines) == [
        (at("2024-05-07T09:00:00-04:00"), "u1", "nudge", "0", "push", "sent", None),
        (at("2024-05-07T10:00:00-04:00"), "u1", "nudge", "2", "email", "sent", None),
    ]


def test_an_exit_during_a_deferral_cancels_the_deferred_send() -> None:
    rules = load(
        """
        version: 1
        quiet_hours: {start: "22:00", end: "09:00"}
        consent: {email: opt_out}
        journeys:
          - id: cart
            trigger: add_to_cart
            exit: [purchase]
            steps:
              - send: email
        """
    )
    lines = [
        doc("add_to_cart", utc("23:00"), product_id="p1"),
        doc("purchase", utc("08:00", day=1)),
    ]
    assert run(rules, lines) == []


def test_after_a_deferral_caps_are_checked_at_the_deferred_time() -> None:
    """At 22:30 the 2h cap is full (21:00); at the deferred 09:00 it is not."""
    rules = load(
        """
        version: 1
        quiet_hours: {start: "22:00", end: "09:00"}
        consent: {email: opt_out}
        caps:
          - {channel: email, max: 1, per: 2h}
        journeys:
          - id: early
            trigger: signup
            steps:
              - send: email
          - id: late
            trigger: add_to_cart
            steps:
              - send: email
        """
    )
    lines = [
        doc("signup", utc("21:00")),
        doc("add_to_cart", utc("22:30"), product_id="p1"),
        doc("add_to_cart", utc("21:30"), "u2", product_id="p1"),  # not quiet: capped at once
        doc("signup", utc("21:00"), "u2"),
    ]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    assert run(rules, lines) == [
        (utc("21:00"), "u1", "early", "0", "email", "sent", None),
        (utc("21:00"), "u2", "early", "0", "email", "sent", None),
        (utc("21:30"), "u2", "late", "0", "email", "suppressed", "capped"),
        (utc("09:00", day=1), "u1", "late", "0", "email", "sent", None),
    ]


# -- consent ----------------------------------------------------------------------

CONSENT_RULES = """
    version: 1
    consent: {email: opt_out, sms: opt_in}
    journeys:
      - id: email
        trigger: signup
        steps:
          - send: email
      - id: sms
        trigger: signup
        steps:
          - send: sms
      - id: whatsapp
        trigger: signup
        steps:
          - send: whatsapp
    """


def consent_outcomes(*lines: bytes) -> dict[str, str]:
    rows = run(load(CONSENT_RULES), [*lines, doc("signup", utc("12:00"))])
    assert {r[0] for r in rows} == {utc("12:00")}
    return {r[4]: r[6] or r[5] for r in rows}


def test_consent_defaults_opt_out_allows_opt_in_and_unlisted_block() -> None:
    assert consent_outcomes() == {"email": "sent", "sms": "no_consent", "whatsapp": "no_consent"}


def test_consent_grant_opens_an_opt_in_channel() -> None:
    grants = (
        doc("consent", utc("09:00"), channel="sms", granted=True),
        doc("consent", utc("09:00"), channel="whatsapp", granted=True),
    )
    assert consent_outcomes(*grants) == {"email": "sent", "sms": "sent", "whatsapp": "sent"}


def test_consent_revocation_closes_an_opt_out_channel() -> None:
    revoke = doc("consent", utc("09:00"), channel="email", granted=False)
    assert consent_outcomes(revoke)["email"] == "no_consent"


def test_an_unsubscribe_engagement_revokes_only_its_channel() -> None:
    lines = (
        doc("consent", utc("09:00"), channel="sms", granted=True),
        doc("engagement", utc("10:00"), action_id="a1", channel="sms", kind="unsubscribed"),
        doc("engagement", utc("10:00"), action_id="a2", channel="email", kind="clicked"),
    )
    assert consent_outcomes(*lines) == {
        "email": "sent",
        "sms": "no_consent",
        "whatsapp": "no_consent",
    }


def test_a_later_decision_by_event_time_wins_over_a_late_arriving_older_one() -> None:
    # A revocation at 10:00 arrives first; a grant from 09:00 arrives after it.
    late_grant = (
        doc("consent", utc("10:00"), channel="sms", granted=False),
        doc("consent", utc("09:00"), channel="sms", granted=True),
    )
    assert consent_outcomes(*late_grant)["sms"] == "no_consent"
    # A grant at 10:00 arrives first; an unsubscribe from 09:00 arrives after it.
    late_revoke = (
        doc("consent", utc("10:00"), channel="sms", granted=True),
        doc("engagement", utc("09:00"), action_id="a1", channel="sms", kind="unsubscribed"),
    )
    assert consent_outcomes(*late_revoke)["sms"] == "sent"


def test_a_grant_after_a_revocation_restores_the_channel() -> None:
    lines = (
        doc("engagement", utc("09:00"), action_id="a1", channel="email", kind="unsubscribed"),
        doc("consent", utc("10:00"), channel="email", granted=True),
    )
    assert consent_outcomes(*lines)["email"] == "sent"


# -- fallback ---------------------------------------------------------------------

FALLBACK_RULES = """
    version: 1
    consent: {push: opt_in, sms: opt_in, email: opt_out}
    journeys:
      - id: fb
        trigger: signup
        steps:
          - send: push
            fallback: [sms, email]
    """


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ({}, ("email", "sent", None)),
        ({"sms": True}, ("sms", "sent", None)),
        ({"push": True, "sms": True}, ("push", "sent", None)),
        ({"push": True, "email": False}, ("push", "sent", None)),
        ({"email": False}, ("push", "suppressed", "no_consent")),  # original channel
        ({"push": False, "sms": False, "email": False}, ("push", "suppressed", "no_consent")),
    ],
)
def test_fallback_takes_the_first_allowed_channel_in_order(
    decisions: dict[str, bool], expected: tuple[str, str, str | None]
) -> None:
    lines = [doc("consent", utc("09:00"), channel=c, granted=g) for c, g in decisions.items()]
    lines.append(doc("signup", utc("12:00")))
    ((when, _u, _j, step, *outcome),) = run(load(FALLBACK_RULES), lines)
    assert (when, step, tuple(outcome)) == (utc("12:00"), "0", expected)


def test_a_capped_fallback_channel_is_suppressed_not_tried_further() -> None:
    """Consent picks the channel (2), then its caps apply (3): no second fallback."""
    rules = load(
        """
        version: 1
        consent: {push: opt_in, sms: opt_out, email: opt_out}
        caps:
          - {channel: sms, max: 1, per: 1d}
        journeys:
          - id: fb
            trigger: signup
            reentry: always
            steps:
              - send: push
                fallback: [sms, email]
        """
    )
    lines = [doc("signup", utc("10:00")), doc("signup", utc("11:00"))]
    assert run(rules, lines) == [
        (utc("10:00"), "u1", "fb", "0", "sms", "sent", None),
        (utc("11:00"), "u1", "fb", "0", "sms", "suppressed", "capped"),
    ]


# -- caps ---------------------------------------------------------------------------


def test_cap_window_is_half_open_and_capped_sends_do_not_count() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out}
        caps:
          - {channel: email, max: 2, per: 1h}
        journeys:
          - id: burst
            trigger: signup
            steps:
              - send: email
              - wait: 30m
              - send: email
              - wait: 30m
              - send: email
              - wait: 1m
              - send: email
              - wait: 30m
              - send: email
        """
    )
    assert run(rules, [doc("signup", utc("10:00"))]) == [
        (utc("10:00"), "u1", "burst", "0", "email", "sent", None),
        (utc("10:30"), "u1", "burst", "2", "email", "sent", None),
        # (10:00, 11:00] holds only 10:30: a send exactly `per` after 10:00 is allowed
        (utc("11:00"), "u1", "burst", "4", "email", "sent", None),
        # (10:01, 11:01] holds 10:30 and 11:00: full
        (utc("11:01"), "u1", "burst", "6", "email", "suppressed", "capped"),
        # (10:31, 11:31] holds 11:00 only; the capped 11:01 does not count
        (utc("11:31"), "u1", "burst", "8", "email", "sent", None),
    ]


def test_any_cap_counts_every_channel_and_every_journey() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out, push: opt_out, sms: opt_out}
        caps:
          - {channel: any, max: 2, per: 1d}
        journeys:
          - id: a
            trigger: signup
            steps:
              - send: email
          - id: b
            trigger: login
            steps:
              - send: push
          - id: c
            trigger: search
            reentry: always
            steps:
              - send: sms
        """
    )
    lines = [
        doc("signup", utc("10:00")),
        doc("login", utc("11:00")),
        doc("search", utc("12:00"), query="shoes"),
        doc("search", utc("10:00", day=1), query="shoes"),  # only 11:00 left in the window
        doc("signup", utc("10:00", day=1), "u2"),  # caps are per user
    ]
    assert run(rules, lines) == [
        (utc("10:00"), "u1", "a", "0", "email", "sent", None),
        (utc("11:00"), "u1", "b", "0", "push", "sent", None),
        (utc("12:00"), "u1", "c", "0", "sms", "suppressed", "capped"),
        # (day 0 10:00, day 1 10:00] holds only the 11:00 push
        (utc("10:00", day=1), "u1", "c", "0", "sms", "sent", None),
        (utc("10:00", day=1), "u2", "a", "0", "email", "sent", None),
    ]


def test_a_channel_cap_leaves_other_channels_alone_and_any_cap_applies_to_all() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out, sms: opt_out}
        caps:
          - {channel: sms, max: 1, per: 1d}
          - {channel: any, max: 3, per: 1d}
        journeys:
          - id: mix
            trigger: signup
            steps:
              - send: sms
              - send: sms
              - send: email
              - send: email
              - send: email
        """
    )
    rows = sorted(run(rules, [doc("signup", utc("10:00"))]), key=lambda r: r[3])
    assert [(r[3], *r[4:]) for r in rows] == [
        ("0", "sms", "sent", None),
        ("1", "sms", "suppressed", "capped"),
        ("2", "email", "sent", None),
        ("3", "email", "sent", None),
        ("4", "email", "suppressed", "capped"),  # any: 3 sent in the day
    ]


# -- suppressed sends ---------------------------------------------------------------


def test_suppressed_sends_do_not_stop_the_journey() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out, sms: opt_in}
        caps:
          - {channel: email, max: 1, per: 1d}
        journeys:
          - id: go_on
            trigger: signup
            steps:
              - send: sms
              - wait: 1h
              - send: email
              - wait: 1h
              - send: email
              - wait: 1h
              - if: "true"
                then:
                  - send: sms
                  - send: email
                    fallback: [sms]
        """
    )
    rows = sorted(run(rules, [doc("signup", utc("10:00"))]), key=lambda r: (r[0], r[3]))
    assert rows == [
        (utc("10:00"), "u1", "go_on", "0", "sms", "suppressed", "no_consent"),
        (utc("11:00"), "u1", "go_on", "2", "email", "sent", None),
        (utc("12:00"), "u1", "go_on", "4", "email", "suppressed", "capped"),
        (utc("13:00"), "u1", "go_on", "6.then.0", "sms", "suppressed", "no_consent"),
        (utc("13:00"), "u1", "go_on", "6.then.1", "email", "suppressed", "capped"),
    ]


# -- duplicates -----------------------------------------------------------------------


def test_a_duplicate_event_id_changes_nothing() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out}
        journeys:
          - id: cart
            trigger: add_to_cart
            key: product_id
            reentry: always
            steps:
              - send: email
        """
    )
    first = doc("add_to_cart", utc("10:00"), eid="same", product_id="p1")
    again = doc("add_to_cart", utc("11:00"), eid="same", product_id="p1")
    lines = [first, first, again]
    assert run(rules, lines) == [(utc("10:00"), "u1", "cart", "0", "email", "sent", None)]


def test_a_duplicate_event_id_adds_no_enrollment_in_the_state() -> None:
    engine = Engine(load(KEYED_RULES))
    state = UserState(key="u1")
    add = event("add_to_cart", utc("10:00"), product_id="p1")
    engine.on_event(state, add, utc("10:00"))
    before = dict(state.enrollments)
    assert engine.on_event(state, add, utc("10:05")) == []
    assert state.enrollments == before
    assert len(state.enrollments) == 1


# -- templates and action ids ---------------------------------------------------------

IDS_RULES = """
    version: 1
    consent: {email: opt_out}
    templates:
      hi:
        email: {subject: "Hi {{ profile.first_name }}", body: "{{ entry.product_id }}"}
    journeys:
      - id: j
        trigger: view_product
        reentry: always
        steps:
          - send: email
          - wait: 1h
          - send: email
            template: hi
    """


def ids_log() -> list[bytes]:
    return [
        doc("profile", utc("09:00"), attributes={"first_name": "Ada"}),
        doc("view_product", utc("10:00"), eid="v1", product_id="p1"),
        doc("view_product", utc("12:00"), eid="v2", product_id="p2"),
        doc("view_product", utc("12:00"), "u2", eid="v3", product_id="p1"),
    ]


def test_a_send_without_template_has_null_template_and_content() -> None:
    actions = replay(Engine(load(IDS_RULES)), ids_log(), drain=True)
    plain = [a for a in actions if a.step == "0"]
    templated = [a for a in actions if a.step == "2"]
    assert len(plain) == 3
    assert all(a.template is None and a.content is None for a in plain)
    assert [(a.user_id, a.template, a.content) for a in templated] == [
        ("u1", "hi", {"subject": "Hi Ada", "body": "p1"}),
        ("u1", "hi", {"subject": "Hi Ada", "body": "p2"}),
        ("u2", "hi", {"subject": "Hi ", "body": "p1"}),
    ]


def test_action_ids_are_stable_across_runs_and_differ_between_enrollments() -> None:
    first = replay(Engine(load(IDS_RULES)), ids_log(), drain=True)
    second = replay(Engine(load(IDS_RULES)), ids_log(), drain=True)
    assert [a.action_id for a in first] == [a.action_id for a in second]
    assert first == second
    ids = [a.action_id for a in first]
    assert len(set(ids)) == len(ids) == 6
    u1_step0 = [a.action_id for a in first if a.user_id == "u1" and a.step == "0"]
    assert len(u1_step0) == 2  # two enrollments (re-entry) of the same journey and step
    assert u1_step0[0] != u1_step0[1]


def test_processing_the_same_events_again_emits_no_action_id_twice() -> None:
    engine = Engine(load(IDS_RULES))
    state = UserState(key="u1")
    lines = ids_log()[:3]
    seen: list[str] = []
    for line in lines:
        e = decode_event(line)
        seen += [a.action_id for a in engine.on_event(state, e, e.ts)]
    seen += [a.action_id for a in engine.advance(state, utc("23:00"))]
    for line in lines:  # redelivered
        seen += [a.action_id for a in engine.on_event(state, decode_event(line), utc("23:00"))]
    seen += [a.action_id for a in engine.advance(state, utc("23:59"))]
    assert len(seen) == len(set(seen)) == 4


# -- step conditions at timer time ----------------------------------------------------


def test_a_step_if_at_timer_time_sees_the_state_at_that_time() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out, sms: opt_out}
        journeys:
          - id: check
            trigger: add_to_cart
            steps:
              - wait: 2h
              - if: "not exists(purchase, 1h)"
                then:
                  - send: email
                else:
                  - send: sms
        """
    )
    lines = [
        doc("add_to_cart", utc("10:00"), "recent", product_id="p1"),
        doc("purchase", utc("11:30"), "recent"),  # inside (11:00, 12:00]: else
        doc("add_to_cart", utc("10:00"), "old", product_id="p1"),
        doc("purchase", utc("10:30"), "old"),  # an hour and a half before 12:00: then
        doc("add_to_cart", utc("10:00"), "later", product_id="p1"),
        doc("purchase", utc("12:30"), "later"),  # after the timer (applied later): then
    ]
    lines.sort(key=lambda line: orjson.loads(line)["ts"])
    assert run(rules, lines) == [
        (utc("12:00"), "later", "check", "1.then.0", "email", "sent", None),
        (utc("12:00"), "old", "check", "1.then.0", "email", "sent", None),
        (utc("12:00"), "recent", "check", "1.else.0", "sms", "sent", None),
    ]


def test_a_step_if_sees_the_cart_at_timer_time() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out}
        journeys:
          - id: cart
            trigger: add_to_cart
            key: product_id
            steps:
              - wait: 1h
              - if: "in_cart(entry.product_id)"
                then: [{send: email}]
        """
    )
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("10:00"), "u2", product_id="p1"),
        doc("remove_from_cart", utc("10:30"), "u2", product_id="p1"),
    ]
    assert run(rules, lines) == [(utc("11:00"), "u1", "cart", "1.then.0", "email", "sent", None)]


def test_an_exit_step_ends_the_enrollment() -> None:
    rules = load(
        """
        version: 1
        consent: {email: opt_out}
        journeys:
          - id: stop
            trigger: signup
            steps:
              - if: "cart.count == 0"
                then: [exit]
              - send: email
        """
    )
    lines = [
        doc("signup", utc("10:00")),
        doc("add_to_cart", utc("09:00"), "u2", product_id="p1"),
        doc("signup", utc("10:00"), "u2"),
    ]
    assert run(rules, lines) == [(utc("10:00"), "u2", "stop", "1", "email", "sent", None)]


# -- advance and next_due ---------------------------------------------------------------

TIMER_RULES = """
    version: 1
    consent: {email: opt_out}
    journeys:
      - id: cart
        trigger: add_to_cart
        key: product_id
        steps:
          - wait: 30m
          - send: email
          - wait: 1h
          - send: email
    """


def timer_state() -> tuple[Engine, UserState]:
    engine = Engine(load(TIMER_RULES))
    state = UserState(key="u1")
    for when, pid in ((utc("10:00"), "p1"), (utc("10:10"), "p2")):
        assert engine.on_event(state, event("add_to_cart", when, product_id=pid), when) == []
    return engine, state


def test_next_due_reports_the_earliest_due_step() -> None:
    engine, state = timer_state()
    assert engine.next_due(state) == utc("10:30")
    assert engine.next_due(UserState(key="nobody")) is None


def test_advance_fires_only_what_is_due_each_at_its_due_time() -> None:
    engine, state = timer_state()
    assert engine.advance(state, utc("10:29")) == []
    fired = engine.advance(state, utc("10:30"))  # due == until fires
    assert [(a.at, a.step, a.content) for a in fired] == [(utc("10:30"), "1", None)]
    assert engine.next_due(state) == utc("10:40")
    fired = engine.advance(state, utc("12:00"))
    assert [(a.at, a.step) for a in fired] == [
        (utc("10:40"), "1"),  # p2
        (utc("11:30"), "3"),  # p1
        (utc("11:40"), "3"),  # p2
    ]
    assert engine.next_due(state) is None
    assert state.enrollments == {}
    assert engine.advance(state, utc("23:00")) == []


def test_on_event_fires_due_timers_before_applying_the_event() -> None:
    engine, state = timer_state()
    actions = engine.on_event(state, event("purchase", utc("11:35")), utc("11:35"))
    assert [(a.at, a.step) for a in actions] == [
        (utc("10:30"), "1"),
        (utc("10:40"), "1"),
        (utc("11:30"), "3"),
    ]
    assert engine.next_due(state) == utc("11:40")  # no exit rule: p2 still runs


def test_replay_until_stops_the_clock() -> None:
    rules = load(TIMER_RULES)
    lines = [
        doc("add_to_cart", utc("10:00"), product_id="p1"),
        doc("add_to_cart", utc("12:00"), product_id="p2"),  # after `until`: not applied
    ]
    assert run(rules, lines, until=utc("11:00"), drain=False) == [
        (utc("10:30"), "u1", "cart", "1", "email", "sent", None),
    ]
    assert run(rules, lines[:1], drain=False) == []  # the clock stops at the last event
