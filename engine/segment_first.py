"""A user's first event: which watched segments it can put them in (SPEC section 9).

Rules of this interface:

* After a user's first applied event, :mod:`engine.segments` must know every
  watched segment's value, and the user is in none of them before it. A
  segment that does not read the event's type (``Deps.types``, not
  ``every_type``) sees that state as it would see a user with no events at
  all. :func:`false_when_empty` says when that value is false whatever the
  clock and the identity: the segment reads no clock but its WITHIN windows
  (no ``now`` passing a constant, nothing ``continuous``: its windows are
  empty, so nothing moves with time) and it is false on an empty state both
  for a guest and for a known customer (``anonymous`` is the one thing
  besides the event types a condition can read that the first event
  changes). Such a segment need not be evaluated at that event: the user
  stays outside it.
* It is found once per rules version, by evaluating the condition on an empty
  :class:`~engine.state.UserState`; a condition never raises.
"""

from __future__ import annotations

from typing import Final

from engine.rules.context import Context
from engine.rules.model import Segment
from engine.state import UserState
from engine.windows import DEFAULT_CONFIG, WindowConfig

_PROBE_AT: Final = 1_700_000_000_000  # any moment: the value cannot depend on it (rules)


def false_when_empty(segment: Segment, windows: WindowConfig = DEFAULT_CONFIG) -> bool:
    """Whether ``segment`` is false for a user with no events, at any moment, guest or
    known customer (module rules)."""
    deps = segment.deps
    if deps.every_type or deps.continuous or deps.moments:
        return False
    for identified in (False, True):
        empty = UserState(identified=identified)
        if segment.cond.fn(Context(empty, _PROBE_AT, windows=windows)) is True:
            return False
    return True
