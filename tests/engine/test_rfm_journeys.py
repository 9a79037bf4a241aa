"""``rfm()`` in rules (SPEC section 9): the language, the validator, replay's refreshes.

Expected actions are worked out by hand: with five buyers whose measures rank
alike, each boundary falls strictly between two neighbours, so the k-th
smallest buyer scores k on that measure.
"""

from __future__ import annotations

import pytest

from engine.errors import RulesError
from engine.events import decode_event
from engine.journeys import Engine
from engine.replay import replay
from engine.rfm import RfmScore
from engine.rules.compiler import Scope, compile_expression
from engine.rules.context import Context
from engine.rules.loader import load_rules
from engine.state import UserState, apply
from tests.engine.test_journeys import doc, load, row, utc

HEADER = """
version: 1
rfm_refresh: 1h
consent: {email: opt_out, sms: opt_out}
journeys:
"""


def _buyers(upto: int = 5) -> list[bytes]:
    """u1..u5: user k buys k times before 01:00, last at 00:0k, for 100 * k each."""
    lines = []
    for k in range(1, upto + 1):
        for n in range(k):
            lines.append(doc("purchase", utc(f"00:0{k}") - n * 1000, f"u{k}", revenue=100 * k))
    return sorted(lines, key=lambda line: line.split(b'"ts":')[1])


VIP = (
    HEADER
    + """
  - id: vip
    trigger: {event: login, if: "rfm().r >= 4 and rfm().f >= 4"}
    steps:
      - send: email
  - id: unscored
    trigger: {event: login, if: "rfm() == null"}
    steps:
      - send: sms
  - id: top
    trigger: {event: login, if: "rfm().score == '555'"}
    steps:
      - send: sms
"""
)


def test_rfm_in_a_trigger_condition() -> None:
    logins = [doc("login", utc("01:30"), f"u{k}") for k in range(6)]  # u0 never bought
    actions = replay(Engine(load(VIP)), [*_buyers(), *logins], received=utc("02:00"))
    assert sorted(row(a)[:5] for a in actions) == [  # SPEC order is by action_id after user
        (utc("01:30"), "u0", "unscored", "0", "sms"),
        (utc("01:30"), "u4", "vip", "0", "email"),
        (utc("01:30"), "u5", "top", "0", "sms"),
        (utc("01:30"), "u5", "vip", "0", "email"),
    ]


def test_before_the_first_refresh_nobody_has_a_score() -> None:
    # The logins come before 01:00: no refresh has seen a buyer, rfm() is null for all.
    logins = [doc("login", utc("00:30"), f"u{k}") for k in (4, 5)]
    actions = replay(Engine(load(VIP)), [*_buyers(), *logins], received=utc("02:00"))
    assert [(a.user_id, a.journey) for a in actions] == [("u4", "unscored"), ("u5", "unscored")]


def test_a_refresh_counts_the_events_before_its_instant() -> None:
    engine = Engine(load(VIP))
    just_before = doc("purchase", utc("01:00") - 1, "u6", revenue=1)
    late = doc("purchase", utc("01:00"), "u7", revenue=1)  # at the 01:00 instant itself
    lines = [*_buyers(), just_before, late, doc("login", utc("02:10"), "u1")]
    replay(engine, lines, received=utc("03:00"))
    assert engine.rfm is not None
    assert engine.rfm.at(utc("00:59")) is None
    at_one = engine.rfm.at(utc("01:59"))
    at_two = engine.rfm.at(utc("02:00"))
    assert at_one is not None
    assert (at_one.at, at_one.buyers) == (utc("01:00"), 6)
    assert at_two is not None
    assert (at_two.at, at_two.buyers) == (utc("02:00"), 7)
    # After the last event the base is unchanged: no further refresh is recorded.
    assert engine.rfm.at(utc("23:00")) is at_two


LAZY = (
    HEADER
    + """
  - id: followup
    trigger: {event: signup}
    steps:
      - wait: 1h
      - if: "rfm().m == 5"
        then:
          - send: email
        else:
          - send: sms
"""
)


def test_a_timer_fired_late_reads_the_boundaries_of_its_due_time() -> None:
    # At 01:00 the base is {a, b}: a spent most (m = 5). Big spenders arrive at 02:30;
    # from 03:00 a's m would be 2. a's step is due at 01:30; replay runs it only at
    # a's next event (05:00), with the boundaries in force at 01:30, as live would.
    lines = [
        doc("purchase", utc("00:10"), "a", revenue=1000),
        doc("purchase", utc("00:20"), "b", revenue=10),
        doc("signup", utc("00:30"), "a"),
        *(doc("purchase", utc("02:30"), user, revenue=5000) for user in ("c", "d", "e")),
        doc("view_product", utc("05:00"), "a", product_id="p1"),
        doc("signup", utc("05:00"), "b"),
    ]
    actions = replay(Engine(load(LAZY)), lines, drain=True, received=utc("07:00"))
    assert [row(a)[:5] for a in actions] == [
        (utc("01:30"), "a", "followup", "1.then.0", "email"),
        (utc("06:00"), "b", "followup", "1.else.0", "sms"),  # b: m = 1 at any time
    ]


def test_rules_without_rfm_compute_no_boundaries() -> None:
    engine = Engine(
        load(HEADER + "  - id: j\n    trigger: {event: login}\n    steps: [{send: sms}]\n")
    )
    assert not engine.uses_rfm
    replay(engine, _buyers(), received=utc("02:00"))
    assert engine.rfm is None


def test_uses_rfm_sees_conditions_in_branches_exits_and_audiences() -> None:
    assert Engine(load(LAZY)).uses_rfm
    exit_rule = (
        HEADER
        + """
  - id: j
    trigger: {event: login}
    exit: [{event: purchase, if: "rfm().f > 2"}]
    steps: [{wait: 1h}, {send: sms}]
"""
    )
    assert Engine(load(exit_rule)).uses_rfm
    assert Engine(load(VIP)).successor(load(exit_rule)).uses_rfm


def test_rfm_fields_of_a_user_without_purchases_are_null() -> None:
    ctx = Context(UserState(key="u"), utc("03:00"))
    for text, expected in (
        ("rfm() == null", True),
        ("rfm().r == null", True),
        ("rfm().r >= 1", False),  # comparisons with null are false
        ("rfm().r < 6", False),
        ("not (rfm().score == '111')", True),
    ):
        assert compile_expression(text, Scope()).holds(ctx) is expected, text


def test_rfm_returns_r_f_m_and_score() -> None:
    engine = Engine(load(VIP))
    replay(engine, [*_buyers(), doc("login", utc("02:10"), "u1")], received=utc("03:00"))
    rfm = compile_expression("rfm()", Scope(), boolean=False)
    for k in range(1, 6):
        state = UserState(key=f"u{k}")
        for line in _buyers():
            if f'"u{k}"'.encode() in line:
                apply(state, decode_event(line), utc("02:00"))
        ctx = Context(state, utc("02:00"), rfm=engine.rfm)
        assert rfm.fn(ctx) == RfmScore(k, k, k)
        assert compile_expression(f"rfm().score == '{k}{k}{k}'", Scope()).holds(ctx)


# -- the validator ----------------------------------------------------------------


def problems(condition: str, extra: str = "") -> list[str]:
    text = (
        HEADER.replace("rfm_refresh: 1h\n", extra)
        + f'  - id: j\n    trigger: {{event: login, if: "{condition}"}}\n'
        + "    steps: [{send: sms}]\n"
    )
    with pytest.raises(RulesError) as caught:
        load_rules(text, "r.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("rfm().x >= 4", "rfm() has no field 'x'; its fields: r, f, m, score"),
        ("rfm().scor == '555'", "rfm() has no field 'scor' (did you mean 'score'?)"),
        ("rfm(purchase).r > 1", "too many arguments: rfm()"),
        ("rfm() > 3", "'>' needs numbers, but rfm() is a record"),
        ("rfm()", "expected a condition (true/false), but rfm() is a record"),
        ("rfm().score > 3", "'>' needs numbers, but rfm().score is a string"),
        ("rfm.r > 3", "rfm is a function: call it"),
        ("count(purchase).r > 1", "count(purchase) is a number, it has no field 'r'"),
        ("rfm().r(1) > 1", "'r' is a field of a result, not a function"),
    ],
)
def test_misuse_is_a_located_error(condition: str, message: str) -> None:
    (problem,) = problems(condition)
    assert problem.startswith("r.yaml:6:"), problem
    assert f"journey j trigger.if: {message}" in problem


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("rfm_refresh: 30s\n", "rfm_refresh 30s is too short"),
        ("rfm_refresh: 0h\n", "rfm_refresh must be more than 0"),
        ("rfm_refresh: soon\n", "rfm_refresh:"),
        ("rfm_refrsh: 1h\n", "unknown key 'rfm_refrsh' in the rules file (did you mean"),
    ],
)
def test_rfm_refresh_is_checked(setting: str, message: str) -> None:
    (problem,) = problems("rfm().r > 1", setting)
    assert problem.startswith("r.yaml:3:"), problem
    assert message in problem


def test_rfm_refresh_defaults_to_an_hour() -> None:
    assert load(HEADER.replace("rfm_refresh: 1h\n", "") + "  []\n").rfm_refresh == 3_600_000
    assert load(HEADER.replace("1h", "1d") + "  []\n").rfm_refresh == 86_400_000
