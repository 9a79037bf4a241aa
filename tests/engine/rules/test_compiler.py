"""The compiler: every operator and function evaluated on real state, and every rejection."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExpressionError
from engine.events import Event, decode_event
from engine.rules.compiler import Scope, compile_expression
from engine.rules.context import Context
from engine.rules.functions import SIGNATURES
from engine.rules.model import Condition
from engine.rules.names import EVENT_FIELDS, FUNCTIONS, PLAIN_EVENT_FIELDS, RECORD_FIELDS
from engine.state import UserState, apply

FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
FULL = Scope(event=True, entry=True, where="test")
TYPICAL = (
    "count(view_product, 24h, it.product_id == event.product_id) >= 3 and not exists(purchase, 1d)"
)
_serial = itertools.count()


def ev(event_type: str, ts: int = NOW, /, **fields: Any) -> Event:
    """A validated event (through the real decoder) for user u1."""
    doc = {"event_id": f"e{next(_serial)}", "type": event_type, "ts": ts, "user_id": "u1"}
    return decode_event(json.dumps({**doc, **fields}))


def state_of(*events: Event, now: int = NOW) -> UserState:
    state = UserState()
    for event in events:
        assert apply(state, event, now) == "applied"
    return state


def run(
    text: str,
    state: UserState | None = None,
    *,
    event: Event | None = None,
    entry: Event | None = None,
    actions: tuple[str, ...] = (),
    now: int = NOW,
) -> Any:
    """Compile (any result type) and evaluate once."""
    condition = compile_expression(text, FULL, boolean=False)
    ctx = Context(state or UserState(), now, event, entry, frozenset(actions))
    return condition.fn(ctx)


def reject(text: str, scope: Scope = FULL, *, boolean: bool = True) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, scope, boolean=boolean)
    return caught.value


VIEW = ev("view_product", product_id="p1", price=25.5, category="shoes/running", quantity=2)


# -- the public interface ----------------------------------------------------------


def test_compile_expression_returns_a_condition_that_holds_only_for_true() -> None:
    condition = compile_expression("event.price > 20", Scope(where="trigger.if"))
    assert isinstance(condition, Condition)
    assert condition.source == "event.price > 20"
    ctx = Context(UserState(), NOW, VIEW)
    assert condition.holds(ctx) is True
    assert condition.holds(Context(UserState(), NOW, None)) is False  # no event: price is null
    unknown = compile_expression("profile.vip", Scope())  # `any` passes the boolean check
    assert unknown.holds(Context(state_of(ev("profile", attributes={"vip": "yes"})), NOW)) is False
    assert unknown.holds(Context(state_of(ev("profile", attributes={"vip": True})), NOW)) is True


def test_every_function_has_a_signature_and_a_compiler() -> None:
    assert tuple(SIGNATURES) == FUNCTIONS
    for name in FUNCTIONS:
        if name == "rfm":  # takes no argument
            assert "too many arguments: rfm()" in reject("rfm(1)").message
            continue
        if name == "most_used_channel":  # its one argument is optional
            message = reject("most_used_channel(1d, 2d) == 'email'").message
            assert "too many arguments: most_used_channel([WITHIN])" in message
            continue
        assert "missing argument" in reject(f"{name}()").message


def test_scope_defaults() -> None:
    assert Scope() == Scope(event=True, entry=False, where="expression")
    assert reject("entry.price > 1", Scope()).message.startswith("expression: ")


def test_message_names_the_place_the_name_and_a_suggestion() -> None:
    err = reject("event.prize >= 20", Scope(where="trigger.if"))
    assert err.message == "trigger.if: unknown field event.prize (did you mean 'price'?)"
    assert str(err) == err.message
    assert err.offset == 6


def test_the_typical_condition() -> None:
    views = [ev("view_product", NOW - h * HOUR, product_id="p1") for h in (1, 5, 23)]
    other = ev("view_product", NOW - 2 * HOUR, product_id="p2")
    old = ev("view_product", NOW - 25 * HOUR, product_id="p1")
    trigger = ev("view_product", NOW, product_id="p1")
    condition = compile_expression(TYPICAL, Scope(where="trigger.if"))

    def holds(*events: Event) -> bool:
        return condition.holds(Context(state_of(*events), NOW, trigger))

    assert holds(*views, other, old) is True  # three views of p1 in 24h
    assert holds(*views[:2], other, old) is False  # only two
    assert holds(*views, ev("purchase", NOW - 2 * DAY, revenue=5)) is True  # purchase is older
    assert holds(*views, ev("purchase", NOW - DAY, revenue=5)) is False  # purchase within 1d
    assert holds(*views, trigger) is True  # the trigger itself counts once applied


# -- literals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("2.5", 2.5),
        ("'çay'", "çay"),
        ('"a\\"b"', 'a"b'),
        ("true", True),
        ("false", False),
        ("null", None),
        ("30s", 30 * SECOND),
        ("15m", 15 * MINUTE),
        ("2h", 2 * HOUR),
        ("7d", 7 * DAY),
        ("1w", 7 * DAY),
        ("1w == 7d", True),
        ("2h == 120m", True),
        ("1d + 30m", DAY + 30 * MINUTE),
        ("[1, 'a', null]", (1, "a", None)),
        ("[]", ()),
    ],
)
def test_literals(text: str, value: Any) -> None:
    assert run(text) == value


# -- operators -------------------------------------------------------------------

# `profile.none` is missing (null); `profile.yes` is true, `profile.no` false,
# `profile.word` a string, `profile.one` the number 1, `profile.age` 31.
PROFILE = state_of(
    ev(
        "profile",
        attributes={"yes": True, "no": False, "word": "gold", "one": 1, "age": 31, "zero": 0},
    )
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # and / or: three-valued, null is unknown
        ("true and true", True),
        ("true and false", False),
        ("false or true", True),
        ("false or false", False),
        ("profile.yes and profile.yes", True),
        ("profile.yes and profile.no", False),
        ("profile.none and profile.no", False),
        ("profile.no and profile.none", False),
        ("profile.none and profile.yes", None),
        ("profile.yes and profile.none", None),
        ("profile.none or profile.yes", True),
        ("profile.yes or profile.none", True),
        ("profile.none or profile.no", None),
        ("profile.no or profile.no", False),
        ("profile.word and profile.yes", None),  # a non-bool is unknown, not truthy
        ("profile.one or profile.no", None),
        # not
        ("not true", False),
        ("not profile.no", True),
        ("not profile.none", None),
        ("not profile.word", None),
        ("not (1 > 2)", True),
        ("not (profile.none > 2)", True),  # the comparison is false, so `not` is true
        # == / !=
        ("1 == 1.0", True),
        ("1 != 2", True),
        ("'a' == 'a'", True),
        ("'a' != 'a'", False),
        ("profile.yes == true", True),
        ("profile.one == true", False),  # unlike Python, true is not 1
        ("profile.yes == 1", False),
        ("profile.one == 1", True),
        ("profile.none == null", True),
        ("profile.none != null", False),
        ("null == profile.word", False),
        ("null == null", True),
        ("profile.none == 1", False),
        ("profile.none != 1", True),
        ("profile.word == profile.word", True),
        ("cart.items == []", True),  # a list equals a tuple with the same elements
        ("favorites != ['x']", True),
        # ordering
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2 >= 3", False),
        ("profile.age > 30", True),
        ("profile.age <= 30", False),
        ("profile.none < 1", False),
        ("profile.none >= 1", False),
        ("1 > profile.none", False),
        ("profile.none <= profile.none", False),
        ("profile.word > 1", False),  # not a number at run time: false, never an error
        ("profile.yes >= 1", False),  # a bool is not a number
        ("since(purchase) > 30d", False),  # no purchase: null
        # in / not in / contains
        ("'shoe' in 'shoes/running'", True),
        ("'bag' in 'shoes/running'", False),
        ("'shoes/running' contains 'running'", True),
        ("'a' in ['a', 'b']", True),
        ("'c' not in ['a', 'b']", True),
        ("'a' not in ['a', 'b']", False),
        ("2 in [1, 2.0]", True),
        ("true in [1]", False),
        ("1 in [true]", False),
        ("profile.word in ['gold', 'silver']", True),
        ("profile.one in ['1']", False),
        ("profile.none in ['a']", False),
        ("profile.none not in ['a']", True),
        ("'a' in profile.none", False),
        ("'a' not in profile.none", True),
        ("profile.one in profile.word", False),  # a number is never in a string
        ("profile.word in [profile.word, 'x']", True),
        ("[1, 2] contains 2", True),
        ("[[1], 2] contains [1]", True),
        ("null in ['a']", False),
        # arithmetic
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),
        ("7 / 2", 3.5),
        ("8 / 2 / 2", 2.0),
        ("-3 * -2", 6),
        ("--3", 3),
        ("1 / 0", None),
        ("1 / profile.zero", None),
        ("profile.age / 0.0", None),
        ("profile.age + 1", 32),
        ("-profile.age", -31),
        ("profile.none + 1", None),
        ("profile.word * 2", None),
        ("-profile.word", None),
        ("-profile.none", None),
        ("profile.yes + 1", None),
        ("profile.none / 2 > 1", False),
        ("now - 1d", NOW - DAY),
    ],
)
def test_operators(text: str, value: Any) -> None:
    result = run(text, PROFILE)
    assert result == value
    assert type(result) is type(value)


def test_overflow_is_null_not_a_crash() -> None:
    big = "9" * 40
    assert run(f"{big} * {big} * {big} * {big} * {big} * {big} * {big} * {big} / 1") is None
    assert run(f"profile.age * {big} * {big} * {big} * {big} * {big} * {big} * {big} / 1.5") is None
    assert run("1e308 * 10") == float("inf")


class _Spy(dict[str, Any]):
    """A profile that records which attributes were read."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self.read.append(key)
        return super().get(key, default)


@pytest.mark.parametrize(
    ("text", "read"),
    [
        ("false and profile.a == 1", []),
        ("true or profile.a == 1", []),
        ("profile.x and profile.a", ["x", "a"]),  # unknown left: the right decides
        ("profile.x or profile.a", ["x", "a"]),
        ("1 == 2 and profile.a", []),
        ("1 == 1 or profile.a", []),
    ],
)
def test_and_or_short_circuit(text: str, read: list[str]) -> None:
    spy = _Spy()
    state = UserState(profile=spy)
    run(text, state)
    assert spy.read == read


def test_constant_subexpressions_are_folded_at_compile_time() -> None:
    condition = compile_expression("1 + 2 * 3 == 7 and not false", FULL)
    assert condition.fn(None) is True  # type: ignore[arg-type]  # no context needed at all


# -- names ---------------------------------------------------------------------------

RICH = ev(
    "purchase",
    NOW - MINUTE,
    anon_id="d1",
    order_id="o1",
    items=[
        {"product_id": "a", "price": 10, "quantity": 2},
        {"product_id": "b", "price": 5.5},
    ],
    props={"coupon": "X", "nested": {"deep": {"er": 3}}, "tags": ["t1"]},
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("event.event_id", VIEW.event_id),
        ("event.type", "view_product"),
        ("event.ts", NOW),
        ("event.user_id", "u1"),
        ("event.anon_id", None),
        ("event.product_id", "p1"),
        ("event.category", "shoes/running"),
        ("event.price", 25.5),
        ("event.quantity", 2),
        ("event.query", None),
        ("event.granted", None),
        ("event.props", None),
        ("event.props.x", None),
        ("event.attributes", None),
    ],
)
def test_event_fields(text: str, value: Any) -> None:
    assert run(text, event=VIEW) == value
    assert run(text) is None  # no event (a timer ran the step): every field is null


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("entry.order_id", "o1"),
        ("entry.anon_id", "d1"),
        ("entry.revenue", 25.5),  # omitted: the sum of the items, as the window stores it
        ("entry.items", ["a", "b"]),
        ("'b' in entry.items", True),
        ("entry.quantity", None),  # not a product event: no default
        ("entry.props", {"coupon": "X", "nested": {"deep": {"er": 3}}, "tags": ["t1"]}),
        ("entry.props.coupon", "X"),
        ("entry.props.nested.deep.er", 3),
        ("entry.props.nested.deep.er.x", None),  # digging into a number: null
        ("entry.props.coupon.x", None),
        ("entry.props.missing.x", None),
        ("'t1' in entry.props.tags", True),
        ("'coupon' in entry.props", True),  # an object holds its keys
        ("entry.props.in", None),  # keywords are fine as keys
    ],
)
def test_entry_fields_and_props(text: str, value: Any) -> None:
    assert run(text, entry=RICH) == value


def test_event_field_defaults_follow_the_contract() -> None:
    assert run("event.quantity", event=ev("add_to_cart", product_id="p")) == 1
    assert run("event.revenue", event=ev("purchase", revenue=7)) == 7.0
    assert run("event.revenue", event=ev("purchase")) is None
    assert run("event.items", event=ev("purchase")) is None
    assert run("event.granted", event=ev("consent", channel="sms", granted=False)) is False
    profile = ev("profile", attributes={"email": "a@b.c"})
    assert run("event.attributes.email", event=profile) == "a@b.c"


def test_every_declared_field_reads_without_error() -> None:
    for name in EVENT_FIELDS:
        run(f"event.{name}", event=RICH)
        run(f"event.{name}", event=VIEW)
    state = state_of(RICH, VIEW)
    for name in RECORD_FIELDS:
        assert run(f"last(purchase, {name})", state) == run(f"entry.{name}", entry=RICH), name


def test_plain_event_fields_read_as_the_raw_attribute() -> None:
    assert {
        "event_id", "type", "ts", "user_id", "anon_id", "product_id", "category", "price",
        "query", "order_id", "channel", "granted", "kind", "action_id", "via", "old_price",
        "drop_pct", "stock", "name", "url", "image",
    } == PLAIN_EVENT_FIELDS  # fmt: skip
    for event in (
        VIEW,
        RICH,
        ev("add_to_cart", product_id="p"),
        ev("consent", channel="sms", granted=True),
    ):
        for name in PLAIN_EVENT_FIELDS:
            assert run(f"event.{name}", event=event) == getattr(event, name)


def test_profile_cart_favorites_now() -> None:
    state = state_of(
        ev("profile", attributes={"first_name": "Ayşe", "age": 30}),
        ev("add_to_cart", product_id="p1", price=10, quantity=2),
        ev("add_to_cart", product_id="p2", price=2.5),
        ev("add_to_cart", product_id="p3"),
        ev("add_favorite", product_id="f1"),
        ev("add_favorite", product_id="f2"),
    )
    assert run("profile.first_name", state) == "Ayşe"
    assert run("profile.age + 1", state) == 31
    assert run("profile.missing", state) is None
    assert run("cart.total", state) == 22.5
    assert run("cart.count", state) == 4
    assert run("cart.items", state) == ["p1", "p2", "p3"]
    assert run("'p2' in cart.items and 'x' not in cart.items", state) is True
    assert run("favorites", state) == ["f1", "f2"]
    assert run("favorites contains 'f2'", state) is True
    assert run("now", state, now=123) == 123
    empty = UserState()
    assert (run("cart.total", empty), run("cart.count", empty), run("cart.items", empty)) == (
        0.0,
        0,
        [],
    )
    assert run("favorites", empty) == []


# -- functions -----------------------------------------------------------------------


def views(*spec: tuple[int, str, float]) -> UserState:
    """view_product records: (ms before NOW, product_id, price)."""
    return state_of(
        *(ev("view_product", NOW - ago, product_id=pid, price=price) for ago, pid, price in spec)
    )


VIEWS = views(
    (DAY + 1, "p1", 10),  # just outside 24h
    (DAY, "p1", 20),  # exactly at the 24h boundary: inside
    (HOUR, "p2", 30),
    (MINUTE, "p1", 40),
    (0, "p3", 50),
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("count(view_product)", 5),
        ("count(view_product, 24h)", 4),
        ("count(view_product, 1d)", 4),
        ("count(view_product, 1441m)", 5),
        ("count(view_product, 1h)", 3),
        ("count(view_product, 59m)", 2),
        ("count(view_product, 0s)", 1),  # ts >= now: the record at now
        ("count(view_product, 1w)", 5),
        ("count(view_product, it.product_id == 'p1')", 3),
        ("count(view_product, 'p1' == it.product_id)", 3),
        ("count(view_product, 24h, it.product_id == 'p1')", 2),
        ("count(view_product, 24h, it.product_id == event.product_id)", 2),
        ("count(view_product, 24h, it.price > 25)", 3),
        ("count(view_product, 24h, it.price >= 20 and it.product_id != 'p3')", 3),
        ("count(view_product, it.product_id in ['p2', 'p3'])", 2),
        ("count(view_product, it.price == 20)", 1),
        ("count(view_product, it.price == null)", 0),
        ("count(view_product, profile.none)", 0),  # an unknown WHERE counts nothing
        ("count(view_product, 24h, it.ts >= now - 1h)", 3),
        ("count(purchase)", 0),
        ("count(purchase, 1d, it.revenue > 1)", 0),
        ("exists(view_product)", True),
        ("exists(view_product, 1h)", True),
        ("exists(view_product, 0s)", True),
        ("exists(purchase)", False),
        ("exists(purchase, 1d)", False),
        ("exists(view_product, it.product_id == 'p2')", True),
        ("exists(view_product, it.product_id == 'p9')", False),
        ("exists(view_product, 30m, it.product_id == 'p2')", False),
        ("exists(view_product, 2h, it.price > 25 and it.price < 35)", True),
        ("exists(view_product, 2h, it.price > 55)", False),
        ("sum(view_product, price)", 150.0),
        ("sum(view_product, price, 24h)", 140.0),
        ("sum(view_product, it.price, 24h)", 140.0),
        ("sum(view_product, price, it.product_id == 'p1')", 70.0),
        ("sum(view_product, price, 1h, it.product_id == 'p1')", 40.0),
        ("sum(view_product, quantity)", 5),  # omitted quantity counts 1
        ("sum(view_product, props.n)", 0),  # no numbers: nothing added
        ("sum(purchase, revenue)", 0),
        ("last(view_product, price)", 50.0),
        ("last(view_product, product_id)", "p3"),
        ("last(view_product, ts)", NOW),
        ("last(purchase, revenue)", None),
        ("since(view_product)", 0),
        ("since(purchase)", None),
    ],
)
def test_window_functions(text: str, value: Any) -> None:
    state = UserState(windows=VIEWS.windows, rollups=VIEWS.rollups, profile={})
    result = run(text, state, event=ev("view_product", product_id="p1"))
    assert result == value
    assert type(result) is type(value)


def test_since_and_last_read_the_latest_record() -> None:
    state = state_of(
        ev("purchase", NOW - 3 * DAY, revenue=10, order_id="o1"),
        ev("purchase", NOW - 2 * DAY, revenue=20, order_id="o2"),
    )
    assert run("since(purchase)", state) == 2 * DAY
    assert run("since(purchase) > 1d and since(purchase) < 3d", state) is True
    assert run("last(purchase, order_id)", state) == "o2"
    assert run("now - last(purchase, ts) == since(purchase)", state) is True


def test_sum_rounds_float_noise_away() -> None:
    state = state_of(
        *(ev("purchase", NOW - h * HOUR, revenue=r) for h, r in enumerate((33.33, 33.33, 33.34)))
    )
    assert run("sum(purchase, revenue)", state) == 100.0
    assert run("sum(purchase, revenue) >= 100", state) is True
    props = state_of(*(ev("signup", NOW - h, props={"n": n}) for h, n in enumerate((1, 2, "x"))))
    assert run("sum(signup, props.n)", props) == 3


def test_sum_of_purchases_uses_the_defaulted_revenue() -> None:
    state = state_of(
        ev("purchase", NOW - HOUR, items=[{"product_id": "a", "price": 4, "quantity": 3}]),
        ev("purchase", NOW, revenue=8),
    )
    assert run("sum(purchase, revenue, 1d)", state) == 20.0
    assert run("count(purchase, 'a' in it.items)", state) == 1


def test_nested_where_binds_the_inner_record_and_restores_the_outer() -> None:
    state = state_of(
        ev("view_product", NOW - 3 * HOUR, product_id="p1"),
        ev("view_product", NOW - 2 * HOUR, product_id="p2"),
        ev("add_to_cart", NOW - HOUR, product_id="p1"),
    )
    # The inner WHERE reads add_to_cart records, the outer one view_product records.
    text = "count(view_product, exists(add_to_cart, it.ts >= 0) and it.product_id in ['p1'])"
    assert run(text, state) == 1
    nested = (
        "count(view_product, count(add_to_cart, it.product_id == 'p1') == 1 "
        "and it.product_id == 'p2')"
    )
    assert run(nested, state) == 1  # `it` is the view again after the inner count
    ctx = Context(state, NOW)
    compile_expression(nested, FULL, boolean=False).fn(ctx)
    assert ctx.it is None


def test_custom_event_types() -> None:
    state = state_of(
        ev("checkout.step", props={"step": 2}),
        ev("wheel:spin-won"),
        ev("signup_done"),
    )
    assert run("count(checkout.step)", state) == 1
    assert run("last(checkout.step, props.step)", state) == 2
    assert run("exists('wheel:spin-won')", state) is True
    assert run("count('signup_done')", state) == 1  # quoted: meant as custom, no typo check
    assert run("count(never_seen_kind)", state) == 0


ENGAGED = state_of(
    ev("engagement", NOW - 3 * HOUR, action_id="a1", channel="email", kind="delivered"),
    ev("engagement", NOW - 2 * HOUR, action_id="a1", channel="email", kind="opened"),
    ev("engagement", NOW - HOUR, action_id="a2", channel="push", kind="clicked"),
    ev("engagement", NOW - HOUR, action_id="other", channel="sms", kind="clicked"),
)


@pytest.mark.parametrize(
    ("text", "actions", "value"),
    [
        ("engaged(email)", ("a1",), True),  # opened counts without a kind
        ("engaged('email', 'opened')", ("a1",), True),
        ("engaged(email, clicked)", ("a1",), False),
        ("engaged(email, delivered)", ("a1",), True),
        ("engaged(email)", ("a2",), False),  # not this enrollment's email
        ("engaged(push)", ("a1", "a2"), True),  # clicked counts without a kind
        ("engaged(push, opened)", ("a1", "a2"), False),
        ("engaged(sms)", ("a1", "a2"), False),  # another enrollment's action
        ("engaged(sms)", ("other",), True),
        ("engaged(email)", (), False),
        ("engaged(whatsapp)", ("a1", "a2"), False),
    ],
)
def test_engaged(text: str, actions: tuple[str, ...], value: bool) -> None:
    assert run(text, ENGAGED, actions=actions) is value
    assert run(text, UserState(), actions=actions) is False


def test_engaged_with_delivered_only_is_not_engagement() -> None:
    state = state_of(ev("engagement", action_id="a1", channel="email", kind="delivered"))
    assert run("engaged(email)", state, actions=("a1",)) is False


def test_in_cart_and_favorited() -> None:
    state = state_of(
        ev("add_to_cart", NOW - 3, product_id="p1"),
        ev("add_to_cart", NOW - 2, product_id="p2"),
        ev("remove_from_cart", NOW - 1, product_id="p2"),
        ev("add_favorite", NOW - 3, product_id="f1"),
        ev("add_favorite", NOW - 2, product_id="f2"),
        ev("remove_favorite", NOW - 1, product_id="f2"),
    )
    entry = ev("add_to_cart", product_id="p1")
    assert run("in_cart(entry.product_id)", state, entry=entry) is True
    assert run("in_cart('p2')", state) is False
    assert run("in_cart(entry.product_id)", state) is False  # no entry: null is in nothing
    assert run("in_cart(profile.n)", state) is False
    assert run("favorited('f1')", state) is True
    assert run("favorited('f2')", state) is False
    assert run("favorited(event.product_id)", state, event=ev("view_product", product_id="f1"))
    assert run("not in_cart('p1')", state_of(ev("purchase", revenue=1))) is True


# -- rejections ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        # comparing known, different types
        ("event.price == 'abc'", 15, "'==' compares event.price (a number) with 'abc' (a string)"),
        ("'abc' != event.price", 9, "compares 'abc' (a string) with event.price (a number)"),
        ("event.granted == 1", 17, "(a condition (true/false)) with 1 (a number)"),
        ("true == 1", 8, "compares true"),
        ("cart.items == 'x'", 14, "(a list) with 'x' (a string)"),
        ("since(purchase) > 'x'", 18, "'>' needs numbers, but 'x' is a string"),
        ("'a' < 'b'", 0, "'<' needs numbers, but 'a' is a string"),
        ("event.granted <= 1", 0, "'<=' needs numbers"),
        ("null > 1", 0, "'>' needs numbers, but null is null"),
        ("cart.items >= 1", 0, "but cart.items is a list"),
        # arithmetic
        ("event.category + 1 > 0", 0, "'+' needs numbers, but event.category is a string"),
        ("1 - 'x' > 0", 4, "'-' needs numbers, but 'x' is a string"),
        ("2 * true > 0", 4, "'*' needs numbers"),
        ("null / 2 > 0", 0, "'/' needs numbers"),
        ("-event.category == 'x'", 1, "'-' needs a number, but event.category is a string"),
        # logic
        ("not event.price", 4, "'not' needs a condition, but event.price is a number"),
        ("event.price and true", 0, "'and' needs conditions on both sides"),
        ("true or 'x'", 8, "'or' needs conditions on both sides, but 'x' is a string"),
        ("not null", 4, "'not' needs a condition"),
        # membership
        ("1 in 2", 5, "'in' needs a list or a string, but 2 is a number"),
        ("'a' in null", 7, "but null is null"),
        ("1 in 'abc'", 0, "'in' looks for text in a string, but 1 is a number"),
        ("event.product_id contains 'x' and 1 contains 2", 34, "'contains' needs a list"),
        ("'abc' contains 1", 15, "looks for text in a string"),
        ("event.price not in event.category", 0, "'not in' looks for text"),
        # the result must be a condition
        (
            "count(purchase)",
            0,
            "expected a condition (true/false), but count(purchase) is a number",
        ),
        ("event.price", 0, "but event.price is a number"),
        ("'yes'", 0, "but 'yes' is a string"),
        ("null", 0, "but null is null"),
        ("cart.items", 0, "but cart.items is a list"),
        ("  1 + 2", 2, "but 1 + 2 is a number"),
    ],
)
def test_type_errors(text: str, offset: int, message: str) -> None:
    err = reject(text)
    assert message in err.message
    assert err.message.startswith("test: ")
    assert err.offset == offset


def test_long_sources_are_shortened_in_messages() -> None:
    err = reject("count(view_product, 24h, it.product_id == event.product_id) + 1")
    assert "but count(view_product, 24h, it.product_i... is a number" in err.message


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("evnt.price > 1", 0, "unknown name 'evnt' (did you mean 'event'?)"),
        ("profil.age > 1", 0, "unknown name 'profil' (did you mean 'profile'?)"),
        ("xyz", 0, "unknown name 'xyz'"),
        ("event.prize > 1", 6, "unknown field event.prize (did you mean 'price'?)"),
        ("entry.produt_id == 'x'", 6, "unknown field entry.produt_id (did you mean 'product_id'?)"),
        ("event.zzz == 1", 6, "unknown field event.zzz"),
        ("event == 1", 5, "event needs a field, e.g. event.price"),
        ("event.price.x == 1", 12, "event.price is a number, it has no field 'x'"),
        ("cart.totl > 1", 5, "unknown field cart.totl (did you mean 'total'?)"),
        ("cart > 1", 4, "cart needs a field"),
        ("profile == 1", 7, "profile takes one attribute name"),
        ("profile.a.b == 1", 10, "profile takes one attribute name"),
        ("favorites.x == 1", 10, "favorites has no fields"),
        ("now.x == 1", 4, "now has no fields"),
        (
            "purchase > 1",
            0,
            "'purchase' is an event type: use it in a function, e.g. count(purchase)",
        ),
        ("count > 1", 0, "count is a function: call it"),
        (
            "count(view_product, it.prise > 1) > 0",
            23,
            "unknown field it.prise (did you mean 'price'?)",
        ),
        ("cnt(purchase) > 1", 0, "unknown function cnt (did you mean 'count'?)"),
        ("exist(purchase)", 0, "unknown function exist (did you mean 'exists'?)"),
        ("frobnicate(1)", 0, "unknown function frobnicate"),
        (
            "count(add_to_crt) > 1",
            6,
            "unknown event type 'add_to_crt' (did you mean 'add_to_cart'?)",
        ),
        ("exists(Purchase)", 7, "(did you mean 'purchase'?)"),
        ("count(view_prodcut, 1h) > 1", 6, "did you mean 'view_product'?"),
        ("count('Bad Type') > 1", 6, "'Bad Type' is not an event type name"),
        ("count(Checkout) > 1", 6, "'Checkout' is not an event type name"),
        ("count(1) > 1", 6, "the first argument of count is an event type"),
        ("since(event.type) > 1", 6, "is an event type name, not a value like event.type"),
        ("sum(purchase, revnue) > 1", 14, "unknown field revnue (did you mean 'revenue'?)"),
        ("sum(purchase, category) > 1", 14, "sum needs a number field"),
        ("sum(purchase, 'revenue') > 1", 14, "the second argument of sum is a field name"),
        ("last(purchase, prize) == 1", 15, "unknown field prize (did you mean 'price'?)"),
        ("last(purchase, props.a.b) == 1", 15, ""),
        ("engaged(emial)", 8, "unknown channel 'emial' (did you mean 'email'?)"),
        ("engaged('pusj')", 8, "did you mean 'push'?"),
        (
            "engaged(email, clikced)",
            15,
            "unknown engagement kind 'clikced' (did you mean 'clicked'?)",
        ),
        ("engaged(1)", 8, "expected channel name, one of email, sms"),
        ("engaged(email.x)", 8, "expected channel name"),
        ("in_cart(1)", 8, "in_cart needs a product id (a string), but 1 is a number"),
        ("favorited(true)", 10, "favorited needs a product id"),
    ],
)
def test_unknown_names(text: str, offset: int, message: str) -> None:
    if message == "":  # accepted: a props path is any
        compile_expression(text, FULL)
        return
    err = reject(text)
    assert message in err.message
    assert err.offset == offset


@pytest.mark.parametrize(
    ("text", "scope", "offset", "message"),
    [
        ("entry.product_id == 'x'", Scope(), 0, "'entry' is not available here"),
        ("event.price > 1 and entry.x == 1", Scope(where="audience"), 20, "'entry' is not"),
        ("event.price > 1", Scope(event=False, entry=True), 0, "'event' is not available here"),
        ("it.price > 1", FULL, 0, "'it' is only bound inside a WHERE argument"),
        ("count(view_product, it.price > 1) > it.price", FULL, 36, "'it' is only bound"),
        ("count(view_product, 1h, it.price > 1) > 0 or it.x", FULL, 45, "'it' is only bound"),
        ("in_cart(it.product_id)", FULL, 8, "'it' is only bound"),
        ("sum(view_product, it.price, it.price > 1) > 0", FULL, -1, ""),
    ],
)
def test_scope(text: str, scope: Scope, offset: int, message: str) -> None:
    if not message:
        compile_expression(text, scope)
        return
    err = reject(text, scope)
    assert message in err.message
    assert err.offset == offset


def test_entry_is_available_in_exit_and_step_conditions() -> None:
    exit_if = compile_expression("event.product_id == entry.product_id", Scope(entry=True))
    entry = ev("add_to_cart", product_id="p1")
    assert exit_if.holds(Context(UserState(), NOW, ev("remove_from_cart", product_id="p1"), entry))
    assert not exit_if.holds(
        Context(UserState(), NOW, ev("remove_from_cart", product_id="p2"), entry)
    )


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        (
            "count() > 0",
            6,
            "missing argument: count(TYPE [, WITHIN or between(FROM, TO)] [, WHERE])",
        ),
        ("count(a, 1h, true, true) > 0", 19, "too many arguments: count(TYPE"),
        ("count(a, true, 1h) > 0", 15, "too many arguments"),
        ("exists()", 7, "missing argument: exists(TYPE"),
        ("exists(a, 1h, true, 1)", 20, "too many arguments"),
        (
            "sum(purchase) > 0",
            12,
            "missing argument: sum(TYPE, FIELD [, WITHIN or between(FROM, TO)] [, WHERE])",
        ),
        ("sum(purchase, revenue, 1h, true, 1) > 0", 33, "too many arguments"),
        ("last(purchase) == 1", 13, "missing argument: last(TYPE, FIELD)"),
        ("last(purchase, price, 1h) == 1", 22, "too many arguments: last(TYPE, FIELD)"),
        ("since() > 1", 6, "missing argument: since(TYPE)"),
        ("since(purchase, 1h) > 1", 16, "too many arguments"),
        ("engaged()", 8, "missing argument: engaged(CHANNEL [, KIND])"),
        ("engaged(email, opened, clicked)", 23, "too many arguments"),
        ("in_cart()", 8, "missing argument: in_cart(PRODUCT)"),
        ("favorited('a', 'b')", 15, "too many arguments: favorited(PRODUCT)"),
        # WITHIN is a duration literal, WHERE a condition
        ("count(a, 3) > 0", 9, "WITHIN must be a duration such as 24h"),
        ("count(a, 2.5) > 0", 9, "WITHIN must be a duration"),
        ("count(a, -1h) > 0", 9, "WITHIN must be a duration"),
        ("count(a, now) > 0", 9, "WHERE of count must be a condition over it"),
        ("exists(a, 1h, it.price)", 14, "but it.price is a number; WITHIN, if any, comes first"),
        ("sum(a, price, 'x') > 0", 14, "WHERE of sum must be a condition"),
        ("count(a, 1h, it.price == 'x') > 0", 25, "compares it.price (a number)"),
    ],
)
def test_arity_and_argument_kinds(text: str, offset: int, message: str) -> None:
    err = reject(text)
    assert message in err.message
    assert err.offset == offset


def test_syntax_errors_carry_the_place_too() -> None:
    err = reject("(event.price > 1", Scope(where="step 4.if"))
    assert err.message == "step 4.if: '(' is never closed: add ')'"
    assert err.offset == 0
    err = reject("event.price > 1 1", Scope(where="exit.if"))
    assert (err.message.startswith("exit.if: unexpected '1'"), err.offset) == (True, 16)
    err = reject("event.price > 1 && true", Scope(where="audience"))
    assert (err.message, err.offset) == ("audience: unknown operator '&&': write 'and'", 16)


def test_boolean_false_allows_any_result_type() -> None:
    assert compile_expression("count(purchase)", FULL, boolean=False).source == "count(purchase)"
    assert "is a number" in reject("count(purchase)", boolean=True).message


# -- properties ----------------------------------------------------------------------

_moments = st.lists(
    st.tuples(st.integers(0, 29 * DAY), st.sampled_from(["p1", "p2", "p3"])), max_size=40
)


@FUZZ
@given(_moments, st.integers(0, 800), st.sampled_from(["h", "m"]))
def test_count_within_equals_a_brute_force_count(
    moments: list[tuple[int, str]], amount: int, unit: str
) -> None:
    state = state_of(*(ev("view_product", NOW - ago, product_id=pid) for ago, pid in moments))
    cutoff = NOW - amount * {"h": HOUR, "m": MINUTE}[unit]
    recent = [pid for ago, pid in moments if NOW - ago >= cutoff]
    within = f"{amount}{unit}"
    event = ev("view_product", product_id="p1")
    assert run(f"count(view_product, {within})", state) == len(recent)
    # The fast path (a bare `it.F == X`) and the general one agree with brute force.
    fast = f"count(view_product, {within}, it.product_id == event.product_id)"
    general = f"count(view_product, {within}, it.product_id == event.product_id and true)"
    assert run(fast, state, event=event) == recent.count("p1")
    assert run(general, state, event=event) == recent.count("p1")
    assert run(f"exists(view_product, {within})", state) == bool(recent)
    assert run(f"exists(view_product, {within}, it.product_id == 'p2')", state) == ("p2" in recent)


_leaves = st.sampled_from(
    [
        "event.price", "event.product_id", "event.props.size", "event.items", "event.granted",
        "entry.category", "entry.props", "profile.age", "profile.tier", "profile.flag",
        "profile.none", "cart.total", "cart.count", "cart.items", "favorites", "now", "0", "1",
        "2.5", "'p1'", "'shoes'", "null", "true", "false", "24h", "[1, 'p1']",
        "count(view_product, 1h, it.price > 10)", "sum(purchase, revenue, 30d)",
        "last(view_product, price)", "last(purchase, items)", "since(purchase)",
        "in_cart(event.product_id)", "engaged(email)", "exists(add_to_cart, 1d)",
        "count(view_product, it.product_id == profile.tier)",
    ]
)  # fmt: skip
_ops = st.sampled_from(
    ["and", "or", "==", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "+", "-", "*", "/"]
)


def _grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, _ops, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda e: f"(not {e})"),
        inner.map(lambda e: f"(-{e})"),
    )


_untyped = st.recursive(_leaves, _grow, max_leaves=8)


def _joined(*parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda t: f"({' '.join(t)})")


def _pick(*options: str) -> st.SearchStrategy[str]:
    return st.sampled_from(options)


# Typed expressions, so that most of them compile: numbers, strings, lists, conditions.
_any = _pick("profile.age", "profile.tier", "profile.flag", "profile.none", "event.props.size")
_it_condition = _pick(
    "it.price > 10", "it.product_id == event.product_id", "it.product_id in cart.items",
    "it.props.size == profile.tier", "it.quantity * it.price >= 20", "it.ts > now - 1h",
    "it.granted", "not it.granted", "it.revenue / 0 == null",
)  # fmt: skip
_within_arg = _pick("", "1h, ", "24h, ", "0s, ")


def _windowed(function: str) -> st.SearchStrategy[str]:
    return st.tuples(_within_arg, _it_condition).map(
        lambda t: f"{function}(view_product, {t[0]}{t[1]})"
    )


_numbers: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        _pick("event.price", "cart.total", "cart.count", "now", "0", "1", "2.5", "24h"),
        _pick("last(view_product, price)", "since(purchase)", "sum(purchase, revenue, 30d)"),
        _any,
        _windowed("count"),
        _joined(_numbers, _pick("+", "-", "*", "/"), _numbers),
        _numbers.map(lambda e: f"(-{e})"),
    )
)
_strings = st.one_of(
    _pick("event.product_id", "entry.category", "'p1'", "'shoes'", "last(view_product, query)"),
    _any,
)
_lists = st.one_of(
    _pick("cart.items", "favorites", "event.items", "[1, 'p1']", "last(purchase, items)", "[]"),
    _any,
)
_conditions: st.SearchStrategy[str] = st.deferred(
    lambda: st.one_of(
        _pick("true", "false", "in_cart(event.product_id)", "engaged(email)", "event.granted"),
        _pick("favorited(entry.product_id)", "engaged(push, clicked)"),
        _any,
        _windowed("exists"),
        _joined(_conditions, _pick("and", "or"), _conditions),
        _conditions.map(lambda e: f"(not {e})"),
        _joined(_numbers, _pick("==", "!=", "<", "<=", ">", ">="), _numbers),
        _joined(_strings, _pick("==", "!="), _strings),
        _joined(_strings, _pick("in", "not in"), st.one_of(_lists, _strings)),
        _joined(_lists, _pick("contains"), _strings),
        _joined(st.one_of(_numbers, _strings, _lists), _pick("== null", "!= null")),
    )
)
_WEIRD = state_of(
    ev("profile", attributes={"age": "thirty", "tier": 3, "flag": "yes"}),
    ev("view_product", NOW - HOUR, product_id="p1", price=12, props={"size": [1]}),
    ev("purchase", NOW - DAY, items=[{"product_id": "p1", "price": 1e308}], revenue=1e308),
    ev("add_to_cart", product_id="p1", price=0),
    ev("engagement", action_id="a", channel="email", kind="opened"),
)
_NORMAL = state_of(
    ev("profile", attributes={"age": 30, "tier": "p1", "flag": True}),
    ev("view_product", NOW - MINUTE, product_id="p1", price=20, props={"size": "M"}),
)


@FUZZ
@given(_untyped)
def test_compile_raises_only_expression_errors(text: str) -> None:
    """Random mixes of names and operators: refused with an ExpressionError, or they run."""
    try:
        condition = compile_expression(text, FULL, boolean=False)
    except ExpressionError as err:
        offset = err.offset
    else:
        offset = 0
        _evaluate_everywhere(condition)
    assert 0 <= offset <= len(text)


@FUZZ
@given(_conditions)
def test_evaluation_never_raises(text: str) -> None:
    """Whatever type-checks runs on any state and any event without an exception."""
    try:
        condition = compile_expression(text, FULL)
    except ExpressionError as err:
        refusal = err.message
    else:
        refusal = ""
        _evaluate_everywhere(condition)
    assert refusal == "" or "deep" in refusal  # only the nesting bounds may refuse these


def _evaluate_everywhere(condition: Condition) -> None:
    events = [None, VIEW, RICH, ev("add_to_cart", product_id="p1", props={"size": None})]
    for state in (UserState(), _WEIRD, _NORMAL):
        for event in events:
            result = condition.fn(Context(state, NOW, event, RICH, frozenset({"a"})))
            assert result is None or type(result) in (bool, int, float, str, list, tuple, dict)
            condition.holds(Context(state, NOW, event, None))
