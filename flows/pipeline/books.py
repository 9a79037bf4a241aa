"""What a shard keeps beside the states for segments and RFM (SPEC section 9), live.

Rules of this interface:

* **Memberships for export**: per shard and watched segment, a set of its
  members (``{P:S}:seg:NAME``, :meth:`flows.stores.keys.ShardKeys.segment`).
  A shopper's entry changes in the same commit as the state whose stored
  membership (``UserState.segments``) changed, so the sets never disagree
  with the states after a crash. Only watched segments (those a journey
  triggers on) are stored; ``tetik segments --live`` evaluates the others
  from the states (:mod:`flows.jobs.segments_live`).
* **RFM inputs**: while the rules call ``rfm()``, a per-shard hash
  ``{P:S}:rfm`` maps each buyer to its packed inputs (:func:`pack_inputs`:
  last purchase ts, purchase count, revenue), written in the commit when
  :func:`engine.rfm.rfm_inputs` of a written state changed (deleted when it is
  no longer a buyer), so the refresh (:mod:`flows.pipeline.rfm_live`) reads
  the base without reading any state.
* :func:`before` takes what a state held before the shard ran it;
  :func:`note` queues in the shard's write what changed (``full``: every
  membership and the inputs, as the sweep after a rules version does, since
  a version that starts calling ``rfm()`` finds the hash empty);
  :func:`forget` drops the shoppers whose state is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from engine.rfm import RfmInputs, rfm_inputs
from engine.segments import watched_names

if TYPE_CHECKING:
    from engine.journeys import Engine
    from engine.state import UserState
    from flows.stores.states import ShardWrite

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(RfmInputs).decode


def pack_inputs(inputs: RfmInputs) -> bytes:
    return _pack(inputs)


def unpack_inputs(data: bytes) -> RfmInputs:
    return _unpack(data)


@dataclass(frozen=True, slots=True)
class Before:
    """A state's memberships and RFM inputs before the shard ran it."""

    segments: dict[str, int]
    rfm: RfmInputs | None


EMPTY = Before({}, None)


def before(engine: Engine, state: UserState | None) -> Before:
    if state is None or not (state.segments or engine.uses_rfm):
        return EMPTY  # nothing kept (rules without watched segments or rfm(): every write)
    return Before(dict(state.segments), rfm_inputs(state) if engine.uses_rfm else None)


def note(
    write: ShardWrite,
    engine: Engine,
    identity: str,
    was: Before,
    state: UserState,
    *,
    full: bool = False,
) -> None:
    """Queue the membership and RFM changes of one written state (see the module rules)."""
    now = state.segments
    if full:
        for name in set(was.segments) | set(now) | set(watched_names(engine.rules)):
            write.members.append((name, identity, name in now))
    elif now != was.segments:
        for name in now.keys() - was.segments.keys():
            write.members.append((name, identity, True))
        for name in was.segments.keys() - now.keys():
            write.members.append((name, identity, False))
    if engine.uses_rfm:
        inputs = rfm_inputs(state)
        if full or inputs != was.rfm:
            write.rfm[identity] = b"" if inputs is None else pack_inputs(inputs)


def forget(write: ShardWrite, engine: Engine) -> None:
    """The shoppers whose state is gone leave every watched set and the RFM hash."""
    if not write.forgotten:
        return
    names = watched_names(engine.rules)
    for identity in write.forgotten:
        write.members.extend((name, identity, False) for name in names)
        if engine.uses_rfm:
            write.rfm[identity] = b""
