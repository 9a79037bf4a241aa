"""Actions: what the engine asks the channels to do (SPEC section 4).

Rules of this interface:

* An :class:`Action` is immutable and fully determined by the rules, the
  events and the clock: ``action_id`` is a hash of (identity, journey,
  enrollment, step path), so processing the same input again yields the same
  ids, and a deferred send keeps its id.
* :func:`to_json` writes exactly the SPEC fields: ``reason`` only for
  suppressed actions, ``template`` and ``content`` as ``null`` when absent;
  the live flow adds ``ingested_at`` (a tetik extension: when the causing
  event reached Kafka), so end-to-end latency is measured, not guessed;
  ``variant`` (SPEC section 11) only when set: a split's arm, or ``holdout``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

Status = Literal["sent", "suppressed"]


class Action(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One channel action, sent or suppressed."""

    action_id: str
    at: int
    user_id: str
    journey: str
    step: str
    channel: str
    template: str | None
    status: Status
    rules_version: str
    reason: str | None = None
    content: dict[str, str] | None = None
    # Live only: when the event that caused this action reached Kafka (epoch ms);
    # None for actions a timer fired and in replays. Latency is measured from it.
    ingested_at: int | None = None
    # Experiments (engine.experiments): the split arm, "holdout" for a held-out
    # entrant, None outside experiments (and in records written before them).
    variant: str | None = None

    def sort_key(self) -> tuple[int, str, str]:
        """The output order of SPEC section 5: ``at``, then user, then action id."""
        return (self.at, self.user_id, self.action_id)


def action_id(identity: str, journey: str, enrollment: str, path: str) -> str:
    """Deterministic id of the action a step emits for one enrollment."""
    raw = "\x1f".join((identity, journey, enrollment, path)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


_encoder = msgspec.json.Encoder()


def to_dict(action: Action) -> dict[str, Any]:
    """The SPEC section 4 object for one action."""
    doc: dict[str, Any] = {
        "action_id": action.action_id,
        "at": action.at,
        "user_id": action.user_id,
        "journey": action.journey,
        "step": action.step,
        "channel": action.channel,
        "template": action.template,
        "status": action.status,
    }
    if action.reason is not None:
        doc["reason"] = action.reason
    doc["rules_version"] = action.rules_version
    doc["content"] = action.content
    if action.variant is not None:
        doc["variant"] = action.variant
    if action.ingested_at is not None:
        doc["ingested_at"] = action.ingested_at
    return doc


def to_json(action: Action) -> bytes:
    """One action as compact JSON (a Kafka value or a JSONL line)."""
    return _encoder.encode(to_dict(action))
