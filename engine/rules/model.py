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
from typing import Any, Literal

from engine.rules.context import Context

ConsentDefault = Literal["opt_in", "opt_out"]


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled boolean expression and the text it came from."""

    source: str
    fn: Callable[[Context], Any]
    warnings: tuple[tuple[int, str], ...] = ()  # (offset in source, message): see the compiler

    def holds(self, ctx: Context) -> bool:
        """True when the expression evaluates to ``true`` (``null`` is false)."""
        return self.fn(ctx) is True


@dataclass(frozen=True, slots=True)
class Wait:
    path: str
    ms: int


@dataclass(frozen=True, slots=True)
class Send:
    path: str
    channel: str
    template: str | None = None
    fallback: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Branch:
    path: str
    cond: Condition
    then: tuple[Step, ...] = ()
    otherwise: tuple[Step, ...] = ()


@dataclass(frozen=True, slots=True)
class ExitStep:
    path: str


Step = Wait | Send | Branch | ExitStep


def longest_wait(steps: Sequence[Step]) -> int:
    """The longest total wait (ms) along any path of ``steps``."""
    total = 0
    for step in steps:
        if isinstance(step, Wait):
            total += step.ms
        elif isinstance(step, Branch):
            total += max(longest_wait(step.then), longest_wait(step.otherwise))
    return total


@dataclass(frozen=True, slots=True)
class Trigger:
    event: str
    cond: Condition | None = None


@dataclass(frozen=True, slots=True)
class ExitRule:
    event: str
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
    warnings: tuple[str, ...] = ()  # "FILE:LINE:COL: warning: ..." lines (rules validate)
