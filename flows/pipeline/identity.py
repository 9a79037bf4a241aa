"""Identity across shards: one customer's anonymous and user ids in the live engine.

SPEC section 7 live. Replay keeps the links in a dict and merges at the link
event (:func:`engine.identity.link`); live, an anonymous id ``a`` and its user
``U`` usually live on different shards (maybe different workers and hosts),
and each shard is the one writer of its keys. The hand-over:

Keys (:class:`flows.stores.keys.ShardKeys`, S_a = ``shard_of(a)``):
``{P:S_a}:links`` (a -> U; S_a is its one writer, the authority),
``{P:S_a}:handoff:a`` (a's final state, for U's shard) and
``{P:S_u}:waiting`` (users whose events wait for a hand-off).

1. **Resolve** (:class:`Resolver`, before the events are keyed by shard): the
   links of a batch's anonymous ids are read in one pipeline, except those
   the process's :class:`~flows.pipeline.link_book.LinkBook` knows (links,
   which are permanent; "not linked" only for ids of this process's own
   shards, whose commits it hears of: its module states the staleness rule).
   An event with only ``user_id`` passes unchanged; only ``anon_id``: linked
   to U, re-keyed to U (:func:`engine.identity.resolve` makes the copy) and
   tagged ``via``; not linked, to a's shard as before. With both: a linked to
   U, tagged ``via``; a linked to another user, tagged ``conflict`` (counted
   by U's shard); a not linked: TWO items, a :class:`LinkRequest` to a's shard
   and the event, tagged ``link``, to U's shard.
2. **Decide** (a's shard): links are made in event time. A request puts a
   pending link (``UserState.linking``: U and T = the link event's ``ts``; the
   earliest request wins) in a's state and T in the shard's timer index. a's
   events with ``ts >= T`` that come meanwhile are kept with it, not applied.
   Once the watermark passes T (every event of a with ``ts < T`` read so far
   has been applied), a's due timers fire up to T, and ONE commit sets
   ``links[a] = U``, writes the hand-off (a's state and the kept events), and
   deletes a's state and its timer and shopper entries, with the actions the
   timers caused. A request for an id already linked changes nothing. An
   anonymous-only event that reaches a's shard after a moved (the resolver's
   look-up raced the commit) finds no state and a link: it is forwarded
   through the outbox to the events topic, keyed by U (U dedups by event id).
3. **Merge** (U's shard): an event tagged ``link``/``via`` for an id not in
   ``U.merged`` starts a HOLD (``UserState.holding``): that event and every
   later one of U are kept in U's state, and U in the shard's ``waiting``
   hash, in the batch's commit. A shard with waiting users looks up their
   anonymous ids' links when users started waiting, when a shard of the
   process committed links, and at least every :data:`POLL_MS` (Bytewax comes
   back by then), through the book (Redis only for what it does not know),
   then reads the hand-offs: ``links[a] == U`` and the hand-off there:
   :func:`engine.identity.link` (both ids' timers, then the merge), the link
   event, then the other held events in ``ts`` order, in one commit that
   drops U from ``waiting``; then the hand-off is deleted (best effort; 7-day
   TTL). ``links[a]`` another user: counted ``identity_conflict``, the held
   events are applied without a merge. ``links[a] == U`` but no hand-off (it
   expired, 7 days): applied without a merge, counted
   ``identity.handoff_missing``. Not linked yet: U keeps waiting.
   While U holds, its own timers wait too (they fire in order with the held
   events, as replay would fire them).

The brief's conflict answer key (``{P:S_a}:conflict:a:U``) is not needed: the
waiting user reads ``links[a]`` itself, which is permanent, so an answer can
neither expire before it is read nor disagree with the authority.

**Exactly once under kill -9.** Each step is one atomic commit on one shard
(:meth:`flows.stores.states.ShardStore.commit`, one slot); a re-run after a
crash re-reads the input from Bytewax's last snapshot:

* Crash before a's link commit: the request's offsets (its own offset
  family, ``link:PARTITION``) may be stored with the pending link or not; if
  not, the request comes again and sets the same pending link (the earliest
  T wins either way). U may hold already: it keeps waiting (its hold and its
  offsets are committed together, so U's re-read events are skipped, not held
  twice).
* Crash after a's link commit, before U's merge commit: the link, the
  hand-off and the deletion of a's state are in Redis together; the re-read
  request finds ``links[a]`` and changes nothing; U's waiting entry is in
  Redis (read at start), so U polls again, finds the hand-off and merges.
  If U had not committed its hold either, the re-read link event is tagged
  ``via`` (the resolver now sees the link), starts the hold and finds the
  hand-off at once. The actions a's timers fired were written in a's commit
  and leave through its outbox.
* Crash after U's merge commit, before the hand-off's deletion: ``a`` is in
  ``U.merged``, so a re-read event tagged for a is handled normally and a
  stray hand-off merges nothing (:func:`engine.identity.merge` refuses a
  merged id); it expires.
* Re-read events re-routed differently (the resolver's answer changed with
  the link): each shard skips the input offsets its states reflect, and an
  event applied to a before the link and again to U after it is a duplicate
  of the id the merged window holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import msgspec

from engine.catalog import Product
from engine.events import decode_event, encode_event
from engine.identity import resolve
from engine.state import Held
from flows.pipeline.decode import Fanout, Route, Stamped
from flows.pipeline.link_book import CACHE_LINKS, LinkBook, look_up
from flows.retry import RedisClient
from flows.stores.keys import Keys

POLL_MS = 10  # a shard with waiting users looks for their hand-offs this often
LINK_PARTITION = "link:"  # a link request's offsets are their own family per partition


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """An event asks the anonymous id's shard to link ``anon`` to ``user`` at ``ts``.

    ``partition``/``offset`` are the event's, in their own family
    (``link:PARTITION``), so a's shard skips a request its states reflect even
    when the event itself went to the same shard.
    """

    anon: str
    user: str
    ts: int
    event_id: str
    now: int
    partition: str = ""
    offset: int = -1

    @property
    def identity(self) -> str:
        return self.anon


class Handoff(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An anonymous id's final state, left by its shard for its user's shard."""

    user: str
    at: int  # the link's time
    state: bytes  # engine.state.dumps of the anonymous id's state (its pending link cleared)
    held: list[Held] = []  # its events at or after ``at``, to apply after the link event


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Handoff).decode
_encode_product = msgspec.msgpack.Encoder().encode
_decode_product = msgspec.msgpack.Decoder(Product).decode


def pack_handoff(handoff: Handoff) -> bytes:
    return _encode(handoff)


def unpack_handoff(data: bytes) -> Handoff:
    return _decode(data)


def identity_of(item: Stamped | LinkRequest) -> str:
    """The identity whose shard takes ``item``."""
    if isinstance(item, LinkRequest):
        return item.anon
    return item.event.key if item.fanout is None else item.fanout.identity


def held(item: Stamped) -> Held:
    """``item`` as a state keeps it while a link is handed over (a product update's
    fan-out keeps its product, :class:`~flows.pipeline.decode.Fanout`)."""
    route = item.route
    return Held(
        encode_event(item.event),
        item.now,
        item.ingested,
        "" if route is None else route.kind,
        "" if route is None else route.anon,
        b"" if item.fanout is None else _encode_product(item.fanout.record),
    )


def unheld(kept: Held) -> Stamped:
    """A kept event, to apply now (no offset: its shard recorded it when it kept it)."""
    route = Route(kept.route, kept.anon) if kept.route else None
    fanout = Fanout("", _decode_product(kept.product)) if kept.product else None
    return Stamped(decode_event(kept.event), kept.now, kept.ingested, route=route, fanout=fanout)


# -- reading other shards' keys (single-key reads, batched, no transaction) --------------


def read_links(client: RedisClient, keys: Keys, anons: Iterable[str]) -> dict[str, str | None]:
    """Anonymous id -> its user (None: not linked), each from its own shard's links."""
    ids = list(dict.fromkeys(anons))
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for anon in ids:
        pipe.hget(keys.of(anon).links, anon)
    found = pipe.execute()
    return {a: None if u is None else u.decode() for a, u in zip(ids, found, strict=True)}


def read_handoffs(client: RedisClient, keys: Keys, anons: Iterable[str]) -> dict[str, Handoff]:
    """The hand-offs present for ``anons``."""
    ids = list(dict.fromkeys(anons))
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for anon in ids:
        pipe.get(keys.of(anon).handoff(anon))
    found = pipe.execute()
    return {a: unpack_handoff(d) for a, d in zip(ids, found, strict=True) if d is not None}


def delete_handoffs(client: RedisClient, keys: Keys, anons: Sequence[str]) -> None:
    """Drop hand-offs their user's shard has merged (best effort: they expire anyway)."""
    if not anons:
        return
    pipe = client.pipeline(transaction=False)
    for anon in anons:
        pipe.delete(keys.of(anon).handoff(anon))
    pipe.execute()


# -- the resolve step ----------------------------------------------------------------------


class Resolver:
    """The pipeline's ``resolve`` step (module step 1): a batch of stamped events in,
    the items to key by shard out. Shared by a process's workers (thread-safe).

    ``book`` is the process's :class:`~flows.pipeline.link_book.LinkBook` (the
    shards' ``ShardConfig.links``): links it knows are not read again, nor "not
    linked" for the anonymous ids of this process's shards. Without it, a
    private book (no shard of its own: "not linked" is always read from Redis)."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        cache: int = CACHE_LINKS,
        book: LinkBook | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._book = book if book is not None else LinkBook(cache)

    def __call__(self, batch: list[Stamped]) -> list[Stamped | LinkRequest]:
        anons = {a for item in batch if (a := _anon(item)) is not None}
        if not anons:
            return list(batch)
        found = look_up(self._book, anons, lambda ids: read_links(self._client, self._keys, ids))
        links = {anon: user for anon, user in found.items() if user is not None}
        out: list[Stamped | LinkRequest] = []
        for item in batch:
            out.extend(route(item, links))
        return out


def _anon(item: Stamped) -> str | None:
    fanout = item.fanout
    if fanout is not None:
        return fanout.identity if fanout.anonymous else None
    anon = item.event.anon_id
    return None if anon is None or anon == item.event.user_id else anon


def route(item: Stamped, links: dict[str, str]) -> list[Stamped | LinkRequest]:
    """Where ``item`` goes given the links known (module step 1)."""
    anon = _anon(item)
    if anon is None:
        return [item]
    fanout = item.fanout
    if fanout is not None:  # a product update for an anonymous id: to its user once linked
        linked = links.get(anon)
        if linked is None:
            return [item]
        return [replace(item, fanout=Fanout(linked, fanout.record))]
    event = item.event
    linked = links.get(anon)
    if event.user_id is None:
        if linked is None:
            return [item]
        moved = resolve(event, {anon: linked}).event
        return [replace(item, event=moved, route=Route("via", anon))]
    if linked is None:
        partition = LINK_PARTITION + item.partition if item.partition else ""
        request = LinkRequest(
            anon, event.user_id, event.ts, event.event_id, item.now, partition, item.offset
        )
        return [request, replace(item, route=Route("link", anon))]
    kind = "via" if linked == event.user_id else "conflict"
    return [replace(item, route=Route(kind, anon))]
