"""Settings and shared strategies of the fuzz targets.

Rules of this module:

* :func:`fuzz_settings` is the one place the example count is chosen. Without
  ``TETIK_FUZZ_EXAMPLES`` (``make test``, CI) a target runs its own small
  ``ci_examples``, derandomized, so CI is reproducible and never flakes on a
  new random find; with it (``make fuzz``) every target runs that many random
  examples and keeps failing ones in ``.hypothesis/fuzz`` (git-ignored), which
  the next run replays first. No deadline in either: the machine is shared.
* :func:`valid_event` draws JSON-ready dicts that satisfy the event contract
  (SPEC section 1) for every standard type and a few custom ones; :data:`NASTY`
  draws the values that break decoders (huge ints, float edges, odd text).
* Nothing here mocks: the targets call the real decoder, state, loader,
  compiler and templates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from engine.durations import DAY
from engine.events import (
    CHANNELS,
    ENGAGEMENT_KINDS,
    INT64_MAX,
    INT64_MIN,
    PRODUCT_TYPES,
    STANDARD_TYPES,
)

ENV: Final = "TETIK_FUZZ_EXAMPLES"
DATABASE: Final = Path(__file__).resolve().parents[2] / ".hypothesis" / "fuzz"


def long_examples() -> int | None:
    """``TETIK_FUZZ_EXAMPLES`` as a count, None when unset; ValueError when not a count."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{raw!r} is not a whole number >= 1; e.g. {ENV}=200000")
    return int(raw)


def _checked_examples() -> int | None:
    try:
        return long_examples()
    except ValueError:
        return None  # conftest.py has already stopped the run with the message


LONG_EXAMPLES: Final = _checked_examples()


def fuzz_settings(ci_examples: int, long_cap: int | None = None) -> settings:
    """Hypothesis settings of one target; see the module rules.

    ``long_cap`` bounds the long run of a target whose input space is small.
    """
    if LONG_EXAMPLES is None:
        return settings(
            max_examples=ci_examples,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
    return settings(
        max_examples=LONG_EXAMPLES if long_cap is None else min(LONG_EXAMPLES, long_cap),
        database=DirectoryBasedExampleDatabase(DATABASE),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def escaped(exc: Exception, call: str, given: object) -> AssertionError:
    """A short failure for an exception outside the documented ones.

    Raise it ``from None``: a RecursionError's thousand-frame traceback would
    take pytest minutes to print for every example hypothesis shrinks.
    """
    return AssertionError(f"{call} raised {type(exc).__name__}: {exc} -- input {given!r:.400}")


# -- values that break decoders ---------------------------------------------------

TS: Final = 1_714_557_600_000  # 2024-05-01T10:00:00Z, the fuzz clock
NASTY_INTS: Final = (
    2**64,
    2**64 - 1,
    2**63,
    INT64_MAX,
    INT64_MIN,
    INT64_MIN - 1,
    2**53 + 1,
    10**30,
    -(10**30),
    -1,
    0,
)
NASTY_FLOATS: Final = (1e308, -1e308, 1.7976931348623157e308, -0.0, 5e-324, 0.1, 1e-300)
NASTY_TEXT: Final = (
    "",
    " ",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "\x00",
    "\u202e",
    "é",
    "😀",
    "a\nb",
    "x" * 1024,
    "x" * 1025,
    "ü" * 600,
)
ODD_TS: Final = (
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59.999999999+00:00",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "0000-01-01T00:00:00Z",
    "2024-02-29T00:00:00-23:59",
    "2023-02-29T00:00:00Z",
    "2024-05-01T24:00:00Z",
    "2024-05-01T23:59:60Z",
    "2024-05-01t10:00:00z",
    "2024-05-01 10:00:00+03:00",
    "2024-05-01T10:00:00.1234567890Z",
    "2024-05-01T10:00:00+99:99",
    "\u0662\u0660\u0662\u0664-\u0660\u0665-\u0660\u0661T10:00:00Z"  # Arabic-Indic digits,
    "2024-05-01T10:00:00Z\n",
)

NASTY: Final[st.SearchStrategy[Any]] = st.one_of(
    st.sampled_from(NASTY_INTS),
    st.sampled_from(NASTY_FLOATS),
    st.sampled_from(NASTY_TEXT),
    st.sampled_from(ODD_TS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)
SCALARS: Final[st.SearchStrategy[Any]] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_KEYS = st.text(max_size=8)
# JSON whose integers are always in int64 (what the state store holds)...
PLAIN_JSON: Final[st.SearchStrategy[Any]] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)
# ...and any JSON, nasty values included.
ANY_JSON: Final[st.SearchStrategy[Any]] = st.recursive(
    SCALARS | NASTY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)

# -- valid events -----------------------------------------------------------------

PRODUCTS: Final = ("p1", "p2", "p3", "sku-ü")
CATEGORIES: Final = ("shoes", "bags", "shoes/running")
CUSTOM_TYPES: Final = ("spin_wheel", "checkout.step", "app.opened:v2")
TIME_ZONES: Final = ("UTC", "Europe/Istanbul", "America/New_York")
ACTION_IDS: Final = ("a1", "a2", "a3")

_IDS = st.text(alphabet="abcdefgh0123", min_size=1, max_size=6)
_PRICES = st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10**6)
_ATTRIBUTES = st.dictionaries(
    st.sampled_from(("first_name", "vip", "tier", "score", "x")),
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    max_size=4,
)
_ITEM = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCTS)},
    optional={
        "category": st.sampled_from(CATEGORIES),
        "price": _PRICES,
        "quantity": st.integers(1, 100),
    },
)
_OPTIONAL: Final[dict[str, st.SearchStrategy[Any]]] = {
    "product_id": st.sampled_from(PRODUCTS),
    "category": st.sampled_from(CATEGORIES),
    "price": _PRICES,
    "quantity": st.integers(1, 1000),
    "query": st.text(max_size=10),
    "order_id": _IDS,
    "revenue": st.floats(-1e6, 1e6, allow_nan=False),
    "items": st.lists(_ITEM, max_size=3),
    "props": st.dictionaries(st.sampled_from(("size", "color", "a", "n")), PLAIN_JSON, max_size=3),
    "channel": st.sampled_from(CHANNELS),
    "granted": st.booleans(),
    "kind": st.sampled_from(ENGAGEMENT_KINDS),
    "action_id": st.sampled_from(ACTION_IDS),
}
_REQUIRED: Final[dict[str, dict[str, st.SearchStrategy[Any]]]] = {
    **{kind: {"product_id": st.sampled_from(PRODUCTS)} for kind in PRODUCT_TYPES},
    "view_category": {"category": st.sampled_from(CATEGORIES)},
    "search": {"query": st.text(max_size=10)},
    "consent": {"channel": st.sampled_from(CHANNELS), "granted": st.booleans()},
    "engagement": {
        "action_id": st.sampled_from(ACTION_IDS),
        "channel": st.sampled_from(CHANNELS),
        "kind": st.sampled_from(ENGAGEMENT_KINDS),
    },
    "profile": {
        "attributes": st.one_of(
            _ATTRIBUTES,
            st.fixed_dictionaries({"timezone": st.sampled_from(TIME_ZONES)}),
            st.fixed_dictionaries({"birthday": st.sampled_from(("04-23", "12-31", "02-29"))}),
        )
    },
}
IDENTITIES: Final = ({"user_id": "u1"}, {"anon_id": "anon-1"}, {"user_id": "u1", "anon_id": "x"})
EVENT_TYPES: Final = (*sorted(STANDARD_TYPES), *CUSTOM_TYPES)


@st.composite
def valid_event(
    draw: st.DrawFn, types: tuple[str, ...] = EVENT_TYPES, now: int = TS, age: int = 30 * DAY
) -> dict[str, Any]:
    """A JSON-ready event of one of ``types`` with ``ts`` in ``[now - age, now]``."""
    kind = draw(st.sampled_from(types))
    identity = draw(st.sampled_from(IDENTITIES))
    required = _REQUIRED.get(kind, {})
    optional = {name: value for name, value in _OPTIONAL.items() if name not in required}
    fields = draw(st.fixed_dictionaries(required, optional=optional))
    return {
        "event_id": draw(_IDS),
        "type": kind,
        "ts": draw(st.integers(max(0, now - age), now)),
        **identity,
        **fields,
    }
