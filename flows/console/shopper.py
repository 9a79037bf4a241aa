"""One shopper for the console: state, segments, enrollments and recent actions.

Rules of this interface:

* The state is :func:`flows.jobs.inspect.state_view`'s (``tetik state``): a
  linked anonymous id shows its user's state. None when the engine has none.
* ``segments`` are every segment of the active rules the shopper is in now
  (evaluated from the state at the wall clock, RFM scored against the latest
  stored boundaries, as ``tetik segments --live`` does).
* ``enrollments`` are the state's runs under way through journeys: the step
  to run next, when it is due, the variant (``holdout`` when held out); a
  finished run leaves the state, so ``entered`` lists every journey (and
  enrollment key) the shopper entered, how often and when last.
* ``actions`` are the latest sent actions the state keeps for attribution
  (journey, step, channel, variant, time), newest first, then the sends the
  frequency caps count (channel, time) when those are all it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.rfm import RfmBook, rfm_inputs, score
from engine.rules.model import Rules
from engine.segments import members_at
from engine.state import UserState
from engine.windows import WindowConfig, with_timezone
from flows.clock import wall_ms
from flows.jobs.inspect import state_view
from flows.pipeline.rfm_live import stored_bounds
from flows.retry import RedisClient
from flows.stores.keys import Keys
from flows.stores.states import Shoppers


@dataclass
class Shopper:
    """What the shopper page shows."""

    identity: str
    view: dict[str, Any]
    segments: list[str] = field(default_factory=list)
    enrollments: list[dict[str, Any]] = field(default_factory=list)
    entered: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)


def lookup(
    client: RedisClient, keys: Keys, identity: str, rules: Rules | None, windows: WindowConfig
) -> Shopper | None:
    """The shopper ``identity`` names (a user id or a linked anonymous id), or None."""
    view = state_view(client, keys, identity)
    if view is None:
        return None
    state = Shoppers(client, keys).load(str(view["user"]))
    if state is None:
        return None
    found = Shopper(
        identity,
        view,
        enrollments=_enrollments(state),
        entered=_entered(state),
        actions=_actions(state),
    )
    if rules is not None:
        found.segments = _segments(client, keys, rules, state, windows)
    return found


def _segments(
    client: RedisClient, keys: Keys, rules: Rules, state: UserState, windows: WindowConfig
) -> list[str]:
    book = RfmBook()
    for bounds in stored_bounds(client, keys):
        book.add(bounds)
    now = wall_ms()
    latest = book.at(now)
    rfm = None if latest is None else score(latest, rfm_inputs(state))
    return members_at(rules, state, now, book, with_timezone(windows, rules.timezone), rfm)


def _enrollments(state: UserState) -> list[dict[str, Any]]:
    return [
        {
            "journey": run.journey,
            "key": run.key,
            "entered": run.entered,
            "next": run.pc if run.pc is not None else "finished",
            "due": run.due,
            "variant": "holdout" if run.holdout else run.variant,
            "actions": len(run.actions),
        }
        for run in sorted(state.enrollments.values(), key=lambda run: -run.entered)
    ]


def _entered(state: UserState) -> list[dict[str, Any]]:
    rows = []
    for name, entry in state.entered.items():
        journey, _, key = name.partition("\x1f")
        rows.append({"journey": journey, "key": key, "count": entry.count, "last": entry.last})
    return sorted(rows, key=lambda row: -int(row["last"]))


def _actions(state: UserState) -> list[dict[str, Any]]:
    refs = [
        {
            "action_id": action_id,
            "journey": ref.journey,
            "step": ref.step,
            "channel": ref.channel,
            "variant": ref.variant,
            "at": ref.at,
        }
        for action_id, ref in state.sent_refs.items()
    ]
    if refs:
        return sorted(refs, key=lambda row: -int(row["at"]))
    return [
        {
            "action_id": "",
            "journey": "",
            "step": "",
            "channel": s.channel,
            "variant": "",
            "at": s.ts,
        }
        for s in sorted(state.sends, key=lambda s: -s.ts)
    ]
