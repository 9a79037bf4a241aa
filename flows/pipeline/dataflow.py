"""The live dataflow, built from its source and sinks: Kafka events -> shards -> actions.

Steps (each owned by one module):

1. ``events``: the input (the real Kafka source, :mod:`flows.pipeline.source`, or
   Bytewax's ``TestingSource`` in tests).
2. ``decode``: :func:`flows.pipeline.decode.decode_stamped` validates and
   stamps each message; invalid ones go to the ``dlq`` sink.
3. ``fanout``: inputs that belong to no single shopper (those a
   :class:`~flows.pipeline.derive.Deriver` wants: always the catalog's
   ``product_update``, :mod:`flows.pipeline.catalog_fanout`) are fanned out,
   paced, to per-shopper items (:mod:`flows.pipeline.derive`), which join the
   shoppers' own events.
4. ``resolve``: each event's identity (:class:`flows.pipeline.identity.Resolver`):
   an anonymous id's event goes to its user once linked, and an event that
   links an anonymous id also sends a :class:`~flows.pipeline.identity.LinkRequest`
   to the anonymous id's shard (SPEC section 7).
5. ``wake``: every shard gets a :class:`~flows.pipeline.shard.Wake` at start,
   so a shard whose shoppers wait on timers runs even before its next event.
6. ``shards``: events are keyed by shard (:func:`flows.stores.keys.shard_of`
   of the identity; one shopper's events stay in order on one worker), and
   :class:`~flows.pipeline.shard.ShardLogic` runs the journeys core on each
   batch, writes to Redis and emits through the outbox.
   ``commits``: once every shard of a turn of the worker has staged its
   commit, they go to the committer thread at once, so they share a round
   trip (:mod:`flows.pipeline.committer`).
7. ``settle`` (bounded runs only, :mod:`flows.pipeline.bounded`): once every
   shard has decided its pending links at the end of the input, each shard's
   waiting users merge; the shards' reports pass through it.
8. ``reports``: what each activation did (actions, counts) goes to the
   ``reports`` sink: tests collect it; the live engine drops it.

:func:`build_flow` takes its source and sinks, so tests run it in process with
``TestingSource``/``TestingSink`` against the real Redis and Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import DynamicSource, Source, StatelessSourcePartition
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from flows.pipeline.bounded import SettleLogic
from flows.pipeline.catalog_fanout import ProductDeriver
from flows.pipeline.committer import Committer
from flows.pipeline.decode import Counting, Rejected, Stamped, decode_stamped, to_dlq
from flows.pipeline.derive import Credit, Deriver, FanoutConfig, FanoutLogic, wants_any
from flows.pipeline.identity import LinkRequest, Resolver, identity_of
from flows.pipeline.shard import ShardConfig, ShardLogic, ShardReport, Snapshot, Wake
from flows.stores.catalog import CatalogStore
from flows.stores.keys import shard_of


class _Wakes(StatelessSourcePartition[Wake]):
    def __init__(self, shards: int) -> None:
        self._pending: list[Wake] | None = [Wake(s) for s in range(shards)]

    def next_batch(self) -> list[Wake]:
        if self._pending is None:
            raise StopIteration
        batch, self._pending = self._pending, None
        return batch


class WakeSource(DynamicSource[Wake]):
    """One :class:`Wake` per shard, from the first worker, once per start."""

    def __init__(self, shards: int) -> None:
        self._shards = shards

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Wakes:
        return _Wakes(self._shards if worker_index == 0 else 0)


class _Dropped(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class DropSink(DynamicSink[Any]):
    """A sink that keeps nothing (the live engine's ``reports``)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Dropped:
        return _Dropped()


def _is_rejected(item: Stamped | Rejected) -> TypeGuard[Rejected]:
    return isinstance(item, Rejected)


def build_flow(
    source: Source[KafkaSourceMessage[Any, Any]],
    dlq_sink: Sink[KafkaSinkMessage[Any, Any]],
    reports_sink: Sink[ShardReport],
    config: ShardConfig,
    *,
    breaker: Counting | None = None,
    derivers: Sequence[Deriver] = (),
    flow_id: str = "tetik",
) -> Dataflow:
    """The live engine's dataflow over any source of Kafka messages (see the module steps)."""
    shards = config.keys.shards
    flow = Dataflow(flow_id)
    messages = op.input("events", flow, source)
    decode = decode_stamped(config.watermark, breaker, config.runtime.windows)
    decoded = op.map("decode", messages, decode)
    split = op.branch("split", decoded, _is_rejected)
    events = cast(Stream[Stamped], split.falses)
    op.output("dlq", op.map("dlq_record", split.trues, to_dlq), dlq_sink)
    catalog = ProductDeriver(CatalogStore(config.client, config.keys), shards)
    events = _fanned_out(events, [catalog, *derivers], config)
    resolver = Resolver(config.client, config.keys, book=config.links)
    resolved = op.flat_map_batch("resolve", events, resolver)
    wakes = cast(Stream[Stamped | LinkRequest | Wake], op.input("wake", flow, WakeSource(shards)))

    def key(item: Stamped | LinkRequest | Wake) -> str:
        return str(item.shard if isinstance(item, Wake) else shard_of(identity_of(item), shards))

    inputs = op.merge("inputs", cast(Stream[Stamped | LinkRequest | Wake], resolved), wakes)
    keyed = op.key_on("shard", inputs, key)

    def builder(resume: Snapshot | None) -> ShardLogic:
        return ShardLogic(config, resume)

    shard_reports = op.stateful_batch("shards", keyed, builder)
    committer = config.committer
    if isinstance(committer, Committer):  # every shard of the turn has staged its commit

        def flushed(reports: list[tuple[str, ShardReport]]) -> list[tuple[str, ShardReport]]:
            committer.flush()
            return reports

        shard_reports = op.flat_map_batch("commits", shard_reports, flushed)
    if config.input_complete is not None:  # a bounded run (flows.pipeline.bounded)

        def settler(resume: int | None) -> SettleLogic:
            return SettleLogic(config, resume)

        shard_reports = op.stateful_batch("settle", shard_reports, settler)
    reports = op.key_rm("unkey", shard_reports)
    if breaker is not None:  # events whose processing failed count as dead letters too

        def count_failed(_step: str, report: ShardReport) -> None:
            if report.counts.get("failed"):
                breaker.record(True, report.counts["failed"])

        op.inspect("count_failed", reports, count_failed)
    op.output("reports", reports, reports_sink)
    return flow


def _fanned_out(
    events: Stream[Stamped], derivers: Sequence[Deriver], config: ShardConfig
) -> Stream[Stamped]:
    """Shoppers' own events, with the derived events of the inputs ``derivers`` want."""
    split = op.branch("derived_inputs", events, wants_any(derivers))
    if config.credit is None:
        config.credit = Credit(config.emitter.in_flight)
    fanout = FanoutConfig(derivers, config.watermark, config.clock, credit=config.credit)

    def builder(resume: Any) -> FanoutLogic:
        return FanoutLogic(fanout, resume)

    keyed = op.key_on("fanout_key", split.trues, lambda _item: "fanout")
    derived = op.key_rm("fanout_unkey", op.stateful_batch("fanout", keyed, builder))
    return op.merge("with_derived", split.falses, derived)
