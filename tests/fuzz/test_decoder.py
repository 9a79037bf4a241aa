"""Fuzz target 1: the event decoder, and the state path of every event it accepts.

Properties, for any input bytes:

* ``decode_event`` returns an :class:`Event` or raises :class:`InvalidEvent`
  whose ``reason`` is one non-empty line; nothing else escapes.
* An accepted event has an identity key and keeps the documented bounds: ``ts``
  an int in ``[0, MAX_TS)``, every int (props, attributes, items included) in
  int64, ``quantity <= MAX_QUANTITY``, every float finite. It encodes and
  decodes back to itself (``encode_event`` is the contract's writer).
* The state path holds for it: applied to a fresh :class:`UserState` at its own
  time it is ``applied``; the state serialises (``dumps``), reads back
  (``loads``) to the same bytes, and the same event again is a ``duplicate``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidEvent
from engine.events import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_BYTES,
    MAX_QUANTITY,
    MAX_TS,
    Event,
    decode_event,
    encode_event,
)
from engine.state import UserState, apply, dumps, loads
from engine.windows import DEFAULT_CONFIG
from tests.fuzz.support import (
    ANY_JSON,
    NASTY,
    ODD_TS,
    PLAIN_JSON,
    fuzz_settings,
    valid_event,
)

pytestmark = pytest.mark.fuzz

FIELDS: Final = (
    "event_id",
    "type",
    "ts",
    "user_id",
    "anon_id",
    "product_id",
    "category",
    "price",
    "quantity",
    "query",
    "order_id",
    "revenue",
    "items",
    "channel",
    "granted",
    "attributes",
    "action_id",
    "kind",
    "props",
)
# JSON text no Python value dumps to: out-of-range numbers, lone surrogates, odd forms.
RAW_LITERALS: Final = (
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "-0.0",
    "1E+2",
    "0.0e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775808",
    "1" * 60,
    "9" * 5000,
    "-" + "9" * 5000,
    "1." + "0" * 400 + "1",
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"\\/"',
    "[" * 40 + "]" * 40,
    "NaN",
    "Infinity",
    "01",
    "+1",
    ".5",
    "tru",
)
SLOT: Final = "\x00slot\x00"  # a placeholder replaced by a raw literal after json.dumps


def outcome(raw: bytes) -> Event | InvalidEvent:
    """The decoded event or the InvalidEvent; any other exception fails the target."""
    try:
        return decode_event(raw)
    except InvalidEvent as exc:
        return exc


def check(raw: bytes) -> Event | None:
    """Run the decoder and the state path on ``raw``; assert the module's properties."""
    event = outcome(raw)
    if isinstance(event, InvalidEvent):
        assert event.reason, "InvalidEvent without a reason"
        assert len(event.reason.splitlines()) == 1, f"reason is not one line: {event.reason!r}"
        return None
    assert event.key
    assert isinstance(event.ts, int)
    assert 0 <= event.ts < MAX_TS
    for item in event.items or ():
        assert item.quantity is None or item.quantity <= MAX_QUANTITY
    assert event.quantity is None or event.quantity <= MAX_QUANTITY
    assert_bounded(msgspec.to_builtins(event))
    wire = encode_event(event)
    if len(wire) <= MAX_EVENT_BYTES:  # `1e5` re-encodes longer (100000.0): may pass the cap
        assert decode_event(wire) == event
    state = UserState(key=event.key)
    assert apply(state, event, event.ts, DEFAULT_CONFIG) == "applied"
    blob = dumps(state)
    again = loads(blob)
    assert dumps(again) == blob
    assert apply(again, event, event.ts, DEFAULT_CONFIG) == "duplicate"
    return event


def assert_bounded(value: Any) -> None:
    """Every number in a decoded event is what msgpack and JSON hold: int64, finite."""
    if isinstance(value, dict):
        for inner in value.values():
            assert_bounded(inner)
    elif isinstance(value, list):
        for inner in value:
            assert_bounded(inner)
    elif isinstance(value, float):
        assert math.isfinite(value), value
    elif isinstance(value, int) and not isinstance(value, bool):
        assert INT64_MIN <= value <= INT64_MAX, value


def encode(data: Any, ascii_only: bool) -> bytes:
    return json.dumps(data, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@fuzz_settings(ci_examples=150)
@given(st.binary(max_size=300))
def test_any_bytes(raw: bytes) -> None:
    check(raw)


@fuzz_settings(ci_examples=100)
@given(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), ANY_JSON, max_size=10)
    | ANY_JSON,
    st.booleans(),
)
def test_any_json(data: Any, ascii_only: bool) -> None:
    check(encode(data, ascii_only))


# -- near-valid events: one valid event, one field mutated ------------------------


def _deep(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


MUTATIONS: Final = st.sampled_from(("set", "drop", "nested", "deep", "raw", "ts"))


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid event with one mutation, as JSON bytes."""
    data = draw(valid_event())
    mutation = draw(MUTATIONS)
    raw_literal: str | None = None
    if mutation == "set":
        data[draw(st.sampled_from(FIELDS))] = draw(NASTY | ANY_JSON)
    elif mutation == "drop":
        data.pop(draw(st.sampled_from(sorted(data))))
    elif mutation == "nested":
        target = draw(st.sampled_from(("props", "attributes", "items")))
        value = draw(NASTY)
        if target == "items":
            field = draw(st.sampled_from(("product_id", "category", "price", "quantity", "x")))
            data["items"] = [{"product_id": "p1", field: value}]
        else:
            data[target] = {draw(st.text(max_size=8)): value}
    elif mutation == "deep":
        depth = draw(st.integers(1, 12))
        data["props"] = {"a": _deep(depth, draw(NASTY | PLAIN_JSON))}
    elif mutation == "ts":
        data["ts"] = draw(st.sampled_from(ODD_TS) | st.from_regex(_RFC3339_ISH, fullmatch=True))
    else:
        data[draw(st.sampled_from(FIELDS))] = SLOT
        raw_literal = draw(st.sampled_from(RAW_LITERALS))
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    if raw_literal is not None:
        text = text.replace(json.dumps(SLOT), raw_literal)
    return text.encode("utf-8", "surrogatepass")


_RFC3339_ISH: Final = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,12})?([Zz]|[+-]\d{2}:\d{2})?"


@fuzz_settings(ci_examples=300)
@given(near_valid())
def test_near_valid_events(raw: bytes) -> None:
    check(raw)


@fuzz_settings(ci_examples=100)
@given(valid_event())
def test_valid_events_are_accepted(data: dict[str, Any]) -> None:
    """The generator's valid events really are valid: the mutations start from them."""
    assert check(json.dumps(data).encode()) is not None


@pytest.mark.parametrize(
    "props",
    [{"a\nb": {"x": "y" * 1025}}, {"a\nb": 2**64}, {"k\u2028": "y" * 1025}],
    ids=["long-string", "huge-int", "line-separator"],
)
def test_reason_is_one_line_when_a_props_key_breaks_lines(props: dict[str, Any]) -> None:
    """Found by fuzzing: a props key with a line break makes a two-line reason."""
    data = {"event_id": "e", "type": "login", "ts": 1, "user_id": "u", "props": props}
    assert check(json.dumps(data).encode()) is None
