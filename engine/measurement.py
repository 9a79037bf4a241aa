"""Measuring journeys (SPEC section 11, ``tetik report``): counts, then report rows.

Rules of this interface:

* Everything a report shows comes from one flat tally of counters, keyed by a
  *field* ``journey|step|variant|metric|channel|reason`` (:func:`field`; an
  absent part is empty: journey ids, step paths, arms, channels and reasons
  never hold ``|``). :func:`tally` adds actions and measures
  (:mod:`engine.experiments`) to one; replay tallies a whole run, the live
  shard a batch (added into Redis in the commit that writes its states), and
  both feed the same :func:`rows`, so a replay report equals a live one.
* Metrics: ``sent`` (by channel) and ``suppressed`` (by channel and reason)
  from actions, per step; ``delivered``, ``opened``, ``clicked``, ``bounced``,
  ``unsubscribed`` from the engagement measures, per step and channel;
  ``entered``, ``assigned`` and ``converted`` per journey (step empty).
* Variants: an action's ``variant``, ``holdout`` for a held-out entrant, empty
  before a split or in a journey without one. Entrants count once, in one
  group: a held-out entrant in ``holdout``, an entrant a split assigned in its
  arm (``assigned``), every other in the empty variant (entered minus
  assigned): so a journey's ``entered`` is the sum of its groups'. A
  conversion counts for the last variant entered (the engine's rule).
* :func:`rows` gives one :class:`ReportRow` per journey and group (``step``
  empty; the holdout last: entered, converted, rate, uplift, and the sums of its steps' sends
  and engagement), then one per journey, step and group with sends,
  suppressions and engagement. Rates are Wilson intervals and uplift over the
  journey's holdout Newcombe's hybrid score interval (:mod:`engine.uplift`,
  95 %); a group without entrants, or a journey without a holdout, has None.
* Per segment (a bounded definition): the watched segments, those a journey
  of the rules triggers on (the only memberships the engine keeps,
  ``UserState.segments``), that the shopper was in at entry. The counters
  ``journey||group|entered||segment`` and ``...|converted||segment`` (group
  ``*`` or ``holdout``) give one row per journey, segment and group (after
  the journey's groups, ``segment`` set): entered, converted, rate, and the
  uplift of ``*`` over that segment's holdout. Sends are not split by segment.
* A journey with a holdout also gets a row of variant ``*``: every entrant
  not held out (the groups' sums). Its uplift is the journey's effect, a fair
  comparison (intent to treat: both sides count the entrants who left, e.g. by
  an exit, before a split). An arm's uplift compares the entrants who reached
  the split and took that arm with the whole holdout: fair when every entrant
  reaches the split (no exit or wait before it), biased otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from engine.actions import Action
from engine.experiments import HOLDOUT, Measure
from engine.uplift import uplift, wilson

SEP = "|"
TREATED = "*"  # the row of every entrant not held out, in a journey with a holdout
ENGAGEMENT = ("delivered", "opened", "clicked", "bounced", "unsubscribed")


def field(
    journey: str,
    step: str,
    variant: str,
    metric: str,
    channel: str = "",
    reason: str = "",
    segment: str = "",
) -> str:
    """The counter's name for one (journey, step, variant, metric, channel, reason), and
    a seventh part, the segment, for the per-segment counters."""
    name = SEP.join((journey, step, variant, metric, channel, reason))
    return f"{name}{SEP}{segment}" if segment else name


def count_action(counts: Counter[str], action: Action) -> None:
    """Count one action: ``sent`` by channel, or ``suppressed`` by channel and reason."""
    reason = action.reason or "" if action.status == "suppressed" else ""
    name = field(
        action.journey, action.step, action.variant or "", action.status, action.channel, reason
    )
    counts[name] += 1


def count_measure(counts: Counter[str], measure: Measure) -> None:
    """Count one measure (entered, assigned, converted, or an engagement kind)."""
    variant = HOLDOUT if measure.holdout else (measure.variant or "")
    name = field(measure.journey, measure.step or "", variant, measure.kind, measure.channel or "")
    counts[name] += 1
    if measure.segments and measure.kind in ("entered", "converted"):
        group = HOLDOUT if measure.holdout else TREATED
        for segment in measure.segments:
            counts[field(measure.journey, "", group, measure.kind, segment=segment)] += 1


def tally(actions: Iterable[Action], measures: Iterable[Measure]) -> Counter[str]:
    """The counters of a run's actions and measures."""
    counts: Counter[str] = Counter()
    for action in actions:
        count_action(counts, action)
    for measure in measures:
        count_measure(counts, measure)
    return counts


class ReportRow(msgspec.Struct, frozen=True, kw_only=True):
    """One row of a report: a journey's group (``step`` empty) or one of its steps."""

    journey: str
    step: str  # "" for the journey's row
    variant: str  # an arm, "holdout", "*" (all not held out) or "" (before a split, no split)
    entered: int = 0
    sent: dict[str, int] = {}  # channel -> actions sent
    suppressed: dict[str, int] = {}  # "channel:reason" -> actions suppressed
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    unsubscribed: int = 0
    converted: int = 0
    rate: float | None = None  # converted / entered, with its Wilson 95 % interval
    rate_low: float | None = None
    rate_high: float | None = None
    uplift: float | None = None  # rate - the holdout's rate, Newcombe's 95 % interval
    uplift_low: float | None = None
    uplift_high: float | None = None
    relative: float | None = None  # rate / the holdout's rate - 1
    segment: str = ""  # a per-segment row (variant "*" or "holdout"): its entrants' segment


class _Group:
    """The counters of one (journey, step, variant) while rows are built."""

    __slots__ = ("metrics", "sent", "suppressed")

    def __init__(self) -> None:
        self.metrics: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()

    def add(self, metric: str, channel: str, reason: str, n: int) -> None:
        if metric == "sent":
            self.sent[channel] += n
        elif metric == "suppressed":
            self.suppressed[f"{channel}:{reason}"] += n
        else:
            self.metrics[metric] += n

    def any(self) -> bool:
        """Whether anything but entries and assignments was counted."""
        ignored = ("entered", "assigned")
        return bool(self.sent or self.suppressed) or any(
            n for metric, n in self.metrics.items() if metric not in ignored
        )

    def absorb(self, other: _Group) -> None:
        self.sent.update(other.sent)
        self.suppressed.update(other.suppressed)
        for metric in ENGAGEMENT:
            self.metrics[metric] += other.metrics[metric]


Segmented = dict[tuple[str, str, str], Counter[str]]  # (journey, segment, group) -> metrics


def _groups(
    counts: Mapping[str, int], journey: str | None, segmented: Segmented
) -> dict[tuple[str, str, str], _Group]:
    groups: dict[tuple[str, str, str], _Group] = {}
    for name, n in counts.items():
        parts = name.split(SEP)
        if not n or (journey is not None and parts[0] != journey):
            continue
        if len(parts) == 7:
            segmented.setdefault((parts[0], parts[6], parts[2]), Counter())[parts[3]] += n
            continue
        if len(parts) != 6:
            continue  # a field of another layout (never written)
        jid, step, variant, metric, channel, reason = parts
        key = (jid, step, variant)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(metric, channel, reason, n)
    return groups


def rows(counts: Mapping[str, int], journey: str | None = None) -> list[ReportRow]:
    """The report's rows (module rules), journeys and groups sorted, ``journey`` alone
    when given."""
    segmented: Segmented = {}
    groups = _groups(counts, journey, segmented)
    totals: dict[tuple[str, str], _Group] = {}
    for (jid, step, variant), group in groups.items():
        total = totals.setdefault((jid, variant), _Group())
        if step:
            total.absorb(group)
        else:
            total.metrics.update(group.metrics)
    entered = _entered(totals)
    out: list[ReportRow] = []
    for jid in sorted({j for j, _ in totals}):
        variants = sorted((v for j, v in totals if j == jid), key=_holdout_last)
        held = totals.get((jid, HOLDOUT))
        base = (held.metrics["converted"], entered[(jid, HOLDOUT)]) if held else None
        if held is not None:  # the journey's effect: every entrant not held out
            treated = [v for v in variants if v != HOLDOUT]
            total = _Group()
            for variant in treated:
                total.absorb(totals[(jid, variant)])
                total.metrics["converted"] += totals[(jid, variant)].metrics["converted"]
            n = sum(entered[(jid, v)] for v in treated)
            star = _journey_row(jid, TREATED, total, n, base)
        for variant in variants:
            if variant == HOLDOUT:
                out.append(star)  # just before the holdout it is measured against
            group = totals[(jid, variant)]
            n = entered[(jid, variant)]
            if not n and not group.any():
                continue  # every entrant is in an arm or the holdout: no "" group
            out.append(_journey_row(jid, variant, group, n, base))
        out.extend(_segment_rows(jid, segmented))
        steps = sorted({(s, v) for j, s, v in groups if j == jid and s}, key=_step_order)
        for step, variant in steps:
            out.append(_step_row(jid, step, variant, groups[(jid, step, variant)]))
    return out


def _segment_rows(jid: str, segmented: Segmented) -> list[ReportRow]:
    """Per segment: the entrants not held out (``*``) and the holdout, their rates and
    the uplift of ``*`` over the segment's holdout."""
    out: list[ReportRow] = []
    for segment in sorted({s for j, s, _ in segmented if j == jid}):
        held = segmented.get((jid, segment, HOLDOUT))
        base = (held["converted"], held["entered"]) if held is not None else None
        for group in (TREATED, HOLDOUT):
            metrics = segmented.get((jid, segment, group))
            if metrics is None:
                continue
            row = _journey_row(jid, group, _Group(), metrics["entered"], base, metrics)
            out.append(msgspec.structs.replace(row, segment=segment))
    return out


def _holdout_last(variant: str) -> tuple[bool, str]:
    return variant == HOLDOUT, variant


def _step_order(key: tuple[str, str]) -> tuple[list[str], tuple[bool, str]]:
    return key[0].split("."), _holdout_last(key[1])


def _entered(totals: dict[tuple[str, str], _Group]) -> Counter[tuple[str, str]]:
    """Entrants per (journey, group): an assigned arm's, the holdout's, the rest in ""."""
    entered: Counter[tuple[str, str]] = Counter()
    for (jid, variant), group in totals.items():
        if variant == HOLDOUT:
            entered[(jid, variant)] += group.metrics["entered"]
        else:
            entered[(jid, variant)] += group.metrics["assigned"]
            entered[(jid, "")] += group.metrics["entered"]
    for (jid, variant), group in totals.items():
        if variant not in ("", HOLDOUT):
            entered[(jid, "")] -= group.metrics["assigned"]
    return entered


def _journey_row(
    jid: str,
    variant: str,
    group: _Group,
    entered: int,
    base: tuple[int, int] | None,
    metrics: Counter[str] | None = None,
) -> ReportRow:
    converted = (metrics if metrics is not None else group.metrics)["converted"]
    rate = wilson(converted, entered) if 0 <= converted <= entered else None
    lift = None
    if base is not None and variant != HOLDOUT and rate is not None and base[0] <= base[1]:
        lift = uplift((converted, entered), base)
    row = ReportRow(
        journey=jid,
        step="",
        variant=variant,
        entered=entered,
        converted=converted,
        rate=None if rate is None else rate.rate,
        rate_low=None if rate is None else rate.low,
        rate_high=None if rate is None else rate.high,
        uplift=None if lift is None else lift.difference,
        uplift_low=None if lift is None else lift.low,
        uplift_high=None if lift is None else lift.high,
        relative=None if lift is None else lift.relative,
    )
    return _with_sends(row, group)


def _step_row(jid: str, step: str, variant: str, group: _Group) -> ReportRow:
    return _with_sends(ReportRow(journey=jid, step=step, variant=variant), group)


def _with_sends(row: ReportRow, group: _Group) -> ReportRow:
    """``row`` with the group's sends, suppressions and engagement."""
    metrics = group.metrics
    return msgspec.structs.replace(
        row,
        sent=dict(sorted(group.sent.items())),
        suppressed=dict(sorted(group.suppressed.items())),
        delivered=metrics["delivered"],
        opened=metrics["opened"],
        clicked=metrics["clicked"],
        bounced=metrics["bounced"],
        unsubscribed=metrics["unsubscribed"],
    )
