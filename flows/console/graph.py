"""A journey as a graph of nested HTML boxes, rendered on the server.

Rules of this interface:

* :func:`journey_graph` draws a compiled :class:`~engine.rules.model.Journey`
  top to bottom: its trigger (with audience, holdout, goal and exit rules),
  then each step as a box (wait, send, exit), a branch as two columns
  (``then`` / ``else``) and a split as one column per arm with its weight;
  an arrow joins consecutive boxes. An arm that does not exit goes on with
  the steps after its fork, as the engine does; the journey's last step is
  followed by an ``end`` box unless it is an exit.
* Counts are the caller's (:mod:`flows.console.counts`): per step path
  (SPEC section 4: ``"3"``, ``"4.then.0"``; ``"entry"`` for the trigger), a
  mapping of measure name to number, shown on the step's box in the order
  given. A step without counts shows none.
* Boxes carry ``data-path`` (the step path) and a class per kind
  (``node trigger|wait|send|branch|split|exit|end``) for styles and tests.
  Everything from the rules file is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

from engine.durations import DAY, HOUR, MINUTE
from engine.rules.model import Branch, ExitStep, Journey, Send, Split, Step, Trigger, Wait

Counts = Mapping[str, Mapping[str, int]]  # step path -> measure -> count
ARROW = Markup('<div class="arrow">&darr;</div>')


def journey_graph(journey: Journey, counts: Counts | None = None) -> Markup:
    """The journey's boxes (see the module rules)."""
    counts = counts or {}
    head = _box("trigger", "entry", _trigger_lines(journey), counts)
    return Markup('<div class="graph" data-journey="{}">{}{}{}</div>').format(
        journey.id, head, ARROW, _column(journey.steps, counts, top=True)
    )


def _column(steps: Sequence[Step], counts: Counts, *, top: bool = False) -> Markup:
    parts = [_step(step, counts) for step in steps]
    if top and (not steps or not isinstance(steps[-1], ExitStep)):
        parts.append(Markup('<div class="node end">end</div>'))
    return Markup('<div class="column">{}</div>').format(ARROW.join(parts))


def _step(step: Step, counts: Counts) -> Markup:
    if isinstance(step, Wait):
        return _box("wait", step.path, [f"wait {_wait(step)}"], counts)
    if isinstance(step, Send):
        return _box("send", step.path, _send_lines(step), counts)
    if isinstance(step, ExitStep):
        return _box("exit", step.path, ["exit"], counts)
    if isinstance(step, Branch):
        arms = [("then", step.then), ("else", step.otherwise)]
        return _fork("branch", step.path, f"if {step.cond.source}", arms, counts)
    assert isinstance(step, Split)
    total = sum(arm.weight for arm in step.arms) or 1
    named = [(f"{arm.name} ({100 * arm.weight / total:.0f} %)", arm.steps) for arm in step.arms]
    return _fork("split", step.path, "split", named, counts)


def _fork(
    kind: str, path: str, title: str, arms: Sequence[tuple[str, Sequence[Step]]], counts: Counts
) -> Markup:
    columns = Markup("").join(
        Markup('<div class="arm"><div class="arm-name">{}</div>{}</div>').format(
            name, _column(steps, counts)
        )
        for name, steps in arms
    )
    return Markup('<div class="fork {}">{}<div class="arms">{}</div></div>').format(
        kind, _box(kind, path, [title], counts), columns
    )


def _box(kind: str, path: str, lines: Sequence[str], counts: Counts) -> Markup:
    text = Markup("<br>").join(escape(line) for line in lines)
    badges = Markup("").join(
        Markup('<span class="count" data-measure="{}">{} {}</span>').format(
            name, name, f"{value:,}"
        )
        for name, value in (counts.get(path) or {}).items()
    )
    return Markup(
        '<div class="node {}" data-path="{}"><div class="label">{}</div>'
        '<div class="counts">{}</div></div>'
    ).format(kind, path, text, badges)


def _trigger_lines(journey: Journey) -> list[str]:
    lines = [f"{journey.id}: {_trigger(journey.trigger)}"]
    if journey.trigger.cond is not None:
        lines.append(f"if {journey.trigger.cond.source}")
    if journey.audience is not None:
        lines.append(f"audience {journey.audience.source}")
    if journey.holdout:
        lines.append(f"holdout {journey.holdout / 100:g} %")
    if journey.goal is not None:
        lines.append(f"goal {journey.goal.event} within {_duration(journey.goal.within)}")
    if journey.exits:
        lines.append("exits on " + ", ".join(rule.event for rule in journey.exits))
    return lines


def _trigger(trigger: Trigger) -> str:
    if trigger.schedule is not None:
        who = f" to segment {trigger.segment}" if trigger.segment else ""
        return f"broadcast at {trigger.schedule.text}{who}"
    if trigger.segment is not None:
        return f"{trigger.on} segment {trigger.segment}"
    return f"on {trigger.event}"


def _send_lines(step: Send) -> list[str]:
    channel = f"by {step.choose.source}" if step.choose is not None else step.channel
    lines = [f"send {channel}"]
    if step.template:
        lines.append(f"template {step.template}")
    if step.fallback:
        lines.append("fallback " + ", ".join(step.fallback))
    return lines


def _wait(step: Wait) -> str:
    if step.until is not None:
        return f"until {step.until // 60:02d}:{step.until % 60:02d} local"
    return _duration(step.ms)


def _duration(ms: int) -> str:
    for unit, name in ((DAY, "d"), (HOUR, "h"), (MINUTE, "m")):
        if ms >= unit and ms % unit == 0:
            return f"{ms // unit}{name}"
    return f"{ms / 1000:g}s"
