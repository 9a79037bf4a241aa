"""Compiled rules: what the loader produces and the journey runtime executes.

Rules of this interface:

* Everything here is built once, at load, and never changes afterwards.
* Expressions are already parsed and type-checked: a :class:`Condition` only
  needs calling. Templates are already compiled.
* Step paths follow SPEC section 4: ``"3"``, ``"4.then.0"``, ``"4.else.1"``.
* Durations are milliseconds; quiet hours are minutes after local midnight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from engine.durations import HOUR
from engine.rules.context import Context
from engine.rules.typed import Type

ConsentDefault = Literal["opt_in", "opt_out"]


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled boolean expression and the text it came from."""

    source: str
    fn: Callable[[Context], Any]
    calls: frozenset[str] = frozenset()  # functions the expression calls, e.g. {"rfm"}
    warnings: tuple[tuple[int, str], ...] = ()  # (offset in source, message): see the compiler
    type: Type = "bool"  # the value's static type ("string", "any"...) when compiled as a value

    def holds(self, ctx: Context) -> bool:
        """True when the expression evaluates to ``true`` (``null`` is false)."""
        return self.fn(ctx) is True


@dataclass(frozen=True, slots=True)
class Wait:
    """``wait: 30m`` (``ms``), or ``wait: {until: "10:00"}``: until the next such local
    time in the shopper's zone (``until``: minutes after local midnight; ``ms`` is then
    one day, the longest such a wait can last, for the bounds on a journey's span)."""

    path: str
    ms: int
    until: int | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """A send; with ``choose`` (``send: {expr: EXPR}``) the channel is the expression's
    value at run time (``channel`` is then the first fallback, where a send that finds
    no channel is reported)."""

    path: str
    channel: str
    template: str | None = None
    fallback: tuple[str, ...] = ()
    choose: Condition | None = None


@dataclass(frozen=True, slots=True)
class Branch:
    path: str
    cond: Condition
    then: tuple[Step, ...] = ()
    otherwise: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class ExitStep:
    path: str


@dataclass(frozen=True, slots=True)
class Arm:
    """One variant of a split: its name, weight and steps (paths ``N.NAME.M``)."""

    name: str
    weight: int
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class Split:
    """``- split: {a: 50, b: 50}`` with ``a: [steps]``, ``b: [steps]`` (engine.experiments)."""

    path: str
    arms: tuple[Arm, ...]

    @property
    def arm_steps(self) -> tuple[tuple[Step, ...], ...]:
        return tuple(arm.steps for arm in self.arms)


Step = Wait | Send | Branch | ExitStep | Split


def longest_wait(steps: Sequence[Step]) -> int:
    """The longest total wait (ms) along any path of ``steps``."""
    total = 0
    for step in steps:
        if isinstance(step, Wait):
            total += step.ms
        elif isinstance(step, Branch):
            total += max(longest_wait(step.then), longest_wait(step.otherwise))
        elif isinstance(step, Split):
            total += max(longest_wait(arm.steps) for arm in step.arms)
    return total


@dataclass(frozen=True, slots=True)
class Schedule:
    """A broadcast's wall time (``2026-11-20T09:00``): in the rules' zone, or in each
    user's own zone when ``local``; ``line``/``column`` (0-based) place it in the file."""

    text: str
    wall: datetime  # naive
    local: bool = False
    line: int = 0
    column: int = 0


@dataclass(frozen=True, slots=True)
class Trigger:
    """What starts an enrollment: an event (``event``), entering or leaving a segment
    (``segment`` with ``on``; ``event`` is ""), or a broadcast (``schedule``, with an
    optional ``segment`` whose members it enrolls)."""

    event: str
    cond: Condition | None = None
    segment: str | None = None
    on: Literal["enter", "exit"] = "enter"
    schedule: Schedule | None = None


@dataclass(frozen=True, slots=True)
class ExitRule:
    event: str
    cond: Condition | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    """``goal: {event: purchase, within: 3d}``: an entrant converts when such an event
    (whose ``if`` holds) happens within ``within`` ms after entry."""

    event: str
    within: int
    cond: Condition | None = None


@dataclass(frozen=True, slots=True)
class Journey:
    """One journey: entry, enrollment key, re-entry rule, exits and steps."""

    id: str
    trigger: Trigger
    steps: tuple[Step, ...]
    name: str = ""
    key: str | None = None  # event field naming the enrollment key, e.g. "product_id"
    audience: Condition | None = None
    reentry: Literal["never", "always"] | int = "never"  # int: ms after the previous entry
    exits: tuple[ExitRule, ...] = ()
    holdout: int = 0  # basis points (1/100 of a percent) of entrants held out: 10% -> 1000
    goal: Goal | None = None


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: int  # minutes after local midnight, inclusive
    end: int  # minutes after local midnight, exclusive; end < start spans midnight


@dataclass(frozen=True, slots=True)
class Cap:
    channel: str  # a channel, or "any"
    max: int
    per_ms: int


# template id -> channel -> field -> render(context variables) -> text
RenderFn = Callable[[Mapping[str, Any]], str]
Templates = Mapping[str, Mapping[str, Mapping[str, RenderFn]]]


@dataclass(frozen=True, slots=True)
class Deps:
    """What a segment's value can change with (engine.rules.segment_defs analyses it).

    ``types``: the event types whose arrival can change it (``every_type``: any);
    with time alone it changes when a record leaves a WITHIN window (``agings``:
    (TYPE, WITHIN)), when ``since(TYPE)`` passes a constant (``thresholds``: (TYPE,
    D)), when ``now`` passes a constant (``moments``), or at any moment
    (``continuous``: evaluated at every recheck instant). ``ranks`` (TYPE, WITHIN,
    K): ``count(TYPE, WITHIN)`` compared with a number changes only when the K-th
    newest record leaves the window. ``drift``: which way the value can move with
    time alone (engine.rules.segment_drift): "const", "falls", "rises" or "any".
    ``delays``: the types it reads only through ``count``/``exists`` over WITHIN: a
    new record of one moves those as going back in time would, so it can only
    delay a change the drift allows (engine.segments skips re-evaluating then).
    """

    types: frozenset[str] = frozenset()
    every_type: bool = False
    continuous: bool = False
    agings: frozenset[tuple[str, int]] = frozenset()
    thresholds: frozenset[tuple[str, int]] = frozenset()
    moments: frozenset[int] = frozenset()
    ranks: frozenset[tuple[str, int, int]] = frozenset()
    drift: Literal["const", "falls", "rises", "any"] = "any"
    delays: frozenset[str] = frozenset()

    @property
    def timed(self) -> bool:
        """Whether the value can change with time alone."""
        return bool(self.continuous or self.agings or self.thresholds or self.moments or self.ranks)


@dataclass(frozen=True, slots=True)
class Segment:
    """A named condition over one user's state (SPEC section 9)."""

    name: str
    cond: Condition
    deps: Deps = Deps()
    fingerprint: str = ""  # of its text and of the segments it uses: changes with either


@dataclass(frozen=True, slots=True)
class Rules:
    """A whole compiled rules file."""

    journeys: tuple[Journey, ...]
    version: int = 1
    timezone: str = "UTC"
    quiet_hours: QuietHours | None = None
    consent: Mapping[str, ConsentDefault] = field(default_factory=dict)
    caps: tuple[Cap, ...] = ()
    templates: Templates = field(default_factory=dict)
    source_hash: str = ""  # sha256 of the file's bytes: the rules_version of actions
    rfm_refresh: int = HOUR  # ms between recomputations of the base's RFM boundaries
    segments: Mapping[str, Segment] = field(default_factory=dict)  # in file order
    segment_recheck: int = 3_600_000  # ms between recheck instants (epoch-aligned)
    warnings: tuple[str, ...] = ()  # "FILE:LINE:COL: warning: ..." lines (rules validate)
