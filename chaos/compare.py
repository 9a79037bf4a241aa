"""What a chaos run emitted, compared with what ``tetik replay`` says it should have.

Rules of this interface (pure functions of plain records, no servers):

* Actions are SPEC section 4 objects (dicts). Two actions are the same when
  every field but the live-only ``ingested_at`` is equal; identity is the
  ``action_id``.
* :func:`tally` counts, against the expected (replay) actions: ``emitted``
  records, ``duplicate`` records (an ``action_id`` already seen), ``missing``
  expected ids never emitted, ``unexpected`` ids replay never produced, and
  ``different`` ids emitted with other content than replay's (a wrong ``at``,
  channel or status). A run is clean when the last four are all 0. The
  missing, unexpected and different actions of a shopper are counted as
  ``excused`` instead when the first of them (by ``at``) fell while one of
  the shopper's earlier events had not reached the broker yet (``late``:
  shopper -> ``(ts, reached)`` of its events that reached it later than the
  engine's lateness allows): the engine was not given that event in time, and
  what follows for that shopper (a cap the stray send used) follows from it.
  Duplicates are never excused.
* :func:`recovery` measures, for each fault, the seconds from the fault's
  end to the first action emitted after it, and to the first action caused
  by an event that was processed within :data:`CAUGHT_UP_LAG_MS` of reaching
  Kafka (the engine is live again, not working through a backlog).
* :func:`dead_letters` matches poison records with ``events.dlq`` records by
  their original bytes; one without a ``tetik.error.reason`` header counts as
  dead-lettered without a reason.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import orjson

__all__ = [
    "CAUGHT_UP_LAG_MS",
    "REASON_HEADER",
    "DeadLetters",
    "Emitted",
    "Poison",
    "Recovery",
    "Tally",
    "comparable",
    "dead_letters",
    "recovery",
    "tally",
]

CAUGHT_UP_LAG_MS = 1_000
REASON_HEADER = "tetik.error.reason"


class Emitted(msgspec.Struct, frozen=True, kw_only=True):
    """One record read from the actions topic: the action and its Kafka timestamp (ms)."""

    action: dict[str, Any]
    kafka_ms: int


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    """Expected (replay) against emitted (live), by ``action_id``."""

    expected: int
    emitted: int
    duplicate: int
    missing: int
    unexpected: int
    different: int = 0
    excused: int = 0
    # A few ids of each kind, to start an investigation from.
    examples: dict[str, list[str]] = msgspec.field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.duplicate or self.missing or self.unexpected or self.different)


class Recovery(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds from each fault's end to the first action, and to being caught up."""

    first_action_s: list[float | None]
    caught_up_s: list[float | None]

    @property
    def worst_first_s(self) -> float | None:
        return _worst(self.first_action_s)

    @property
    def unrecovered(self) -> int:
        """Faults after which the engine never got back to live (no caught-up action)."""
        return sum(1 for v in self.caught_up_s if v is None)

    @property
    def worst_caught_up_s(self) -> float | None:
        return _worst(self.caught_up_s)

    @property
    def median_caught_up_s(self) -> float | None:
        """The typical fault's time to caught up (the worst is often kills in a row)."""
        found = sorted(v for v in self.caught_up_s if v is not None)
        return found[len(found) // 2] if found else None


class Poison(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid record that was sent: its kind (e.g. ``huge_int``) and bytes."""

    kind: str
    value: bytes


class DeadLetters(msgspec.Struct, frozen=True, kw_only=True):
    """Poison records sent against those found in ``events.dlq``."""

    sent: int
    dead_lettered: int
    without_reason: int
    missed_by_kind: dict[str, int]
    reasons: dict[str, int]  # reason text (first 60 chars) -> records

    @property
    def complete(self) -> bool:
        return self.dead_lettered == self.sent and not self.without_reason


def comparable(action: Mapping[str, Any]) -> bytes:
    """The action's content without the live-only ``ingested_at``, as canonical bytes."""
    fields = {k: v for k, v in action.items() if k != "ingested_at"}
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def tally(
    expected: Sequence[Mapping[str, Any]],
    emitted: Sequence[Mapping[str, Any]],
    examples: int = 3,
    late: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> Tally:
    """Compare by ``action_id`` (see the module rules)."""
    want = {a["action_id"]: comparable(a) for a in expected}
    got: dict[str, bytes] = {}
    duplicates: list[str] = []
    for action in emitted:
        key = action["action_id"]
        if key in got:
            duplicates.append(key)
        got.setdefault(key, comparable(action))
    found = {
        "missing": sorted(want.keys() - got.keys()),
        "unexpected": sorted(got.keys() - want.keys()),
        "different": sorted(k for k in want.keys() & got.keys() if want[k] != got[k]),
    }
    spared_shoppers = _excused(found, [*expected, *emitted], late or {})
    every = {a["action_id"]: str(a.get("user_id")) for a in (*expected, *emitted)}
    spared = {kind: [k for k in ids if every[k] in spared_shoppers] for kind, ids in found.items()}
    found = {kind: [k for k in ids if k not in spared[kind]] for kind, ids in found.items()}
    found["duplicate"] = duplicates
    return Tally(
        expected=len(want),
        emitted=len(emitted),
        duplicate=len(duplicates),
        missing=len(found["missing"]),
        unexpected=len(found["unexpected"]),
        different=len(found["different"]),
        excused=sum(len(ids) for ids in spared.values()),
        examples={kind: ids[:examples] for kind, ids in found.items() if ids},
    )


def _excused(
    found: Mapping[str, Sequence[str]],
    actions: Sequence[Mapping[str, Any]],
    late: Mapping[str, Sequence[tuple[int, int]]],
) -> set[str]:
    """Shoppers whose first discrepancy fell while an earlier event of theirs was in transit."""
    if not late:
        return set()
    wrong = {key for ids in found.values() for key in ids}
    first: dict[str, int] = {}
    for action in actions:
        if action["action_id"] in wrong:
            user, at = str(action.get("user_id")), int(action.get("at", 0))
            first[user] = min(at, first.get(user, at))
    return {
        user
        for user, at in first.items()
        if any(ts <= at <= reached for ts, reached in late.get(user, ()))
    }


def recovery(fault_ends_ms: Iterable[int], emitted: Iterable[Emitted]) -> Recovery:
    """Recovery times after each fault (None when no action followed it)."""
    stamps = sorted(e.kafka_ms for e in emitted)
    live = sorted(
        e.kafka_ms
        for e in emitted
        if isinstance(e.action.get("ingested_at"), int)
        and e.kafka_ms - e.action["ingested_at"] <= CAUGHT_UP_LAG_MS
    )
    ends = list(fault_ends_ms)
    return Recovery(
        first_action_s=[_after(stamps, end) for end in ends],
        caught_up_s=[_after(live, end) for end in ends],
    )


def dead_letters(
    poison: Iterable[Poison], dlq: Iterable[tuple[bytes, Mapping[str, bytes]]]
) -> DeadLetters:
    """Match poison records with dead letters ``(value, headers)`` by value."""
    found: dict[bytes, Mapping[str, bytes]] = {}
    for value, headers in dlq:
        found.setdefault(value, headers)
    sent = list(poison)
    missed: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    without = hit = 0
    for record in sent:
        letter = found.get(record.value)
        if letter is None:
            missed[record.kind] += 1
            continue
        hit += 1
        reason = letter.get(REASON_HEADER, b"").decode(errors="replace").strip()
        if reason:
            reasons[reason[:60]] += 1
        else:
            without += 1
    return DeadLetters(
        sent=len(sent),
        dead_lettered=hit,
        without_reason=without,
        missed_by_kind=dict(missed),
        reasons=dict(reasons.most_common(8)),
    )


def _after(stamps: Sequence[int], start_ms: int) -> float | None:
    """Seconds from ``start_ms`` to the first stamp at or after it (sorted input)."""
    index = bisect.bisect_left(stamps, start_ms)
    return None if index == len(stamps) else round((stamps[index] - start_ms) / 1000, 3)


def _worst(values: Sequence[float | None]) -> float | None:
    """The largest of the values that are known (None when there is none)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None
