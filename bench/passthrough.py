"""Baseline (a) of ``tetik bench e2e``: the framework's floor.

A Bytewax Kafka -> Kafka dataflow that decodes each event exactly as tetik
does (``engine.events.decode_event``) and writes one small JSON record per
event to the output topic, with the event's Kafka timestamp as
``ingested_at``. Same source settings as ``tetik run`` (batch size, fetch
wait), one worker, no state and no Redis: whatever tetik costs beyond this
is the cost of the engine itself.

Run: ``python -m bench.passthrough --bootstrap HOST:PORT --events T --out T``;
SIGINT/SIGTERM stop it at the next batch.
"""

from __future__ import annotations

import argparse
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.run import cli_main

from engine.errors import InvalidEvent
from engine.events import decode_event
from flows.jobs.run import RunOptions
from flows.pipeline.source import StoppableKafkaSource, stop_on_signals
from flows.settings import LOW_LATENCY_CONSUMER

Message = KafkaSourceMessage[bytes | None, bytes | None]


def passthrough_record(message: Message) -> KafkaSinkMessage[bytes | None, bytes]:
    """One output record per input event: its id (or the decode error) and send time."""
    _kind, ingested = message.timestamp or (0, 0)
    try:
        event = decode_event(message.value or b"")
    except InvalidEvent as exc:
        doc: dict[str, Any] = {"error": str(exc), "ingested_at": ingested}
    else:
        doc = {"event_id": event.event_id, "user": event.key, "ingested_at": ingested}
    return KafkaSinkMessage(message.key, orjson.dumps(doc))


def passthrough_flow(bootstrap: str, events: str, out: str, stop: Any) -> Dataflow:
    """Kafka ``events`` -> decode -> Kafka ``out``, one record per event."""
    flow = Dataflow("bench_passthrough")
    source = StoppableKafkaSource(
        [bootstrap],
        [events],
        tail=True,
        batch_size=RunOptions().batch_size,
        add_config=LOW_LATENCY_CONSUMER,
        stop=stop,
    )
    messages = op.input("events", flow, source)
    records = op.map("decode", messages, passthrough_record)  # type: ignore[arg-type]
    op.output("out", records, KafkaSink([bootstrap], out, add_config={"linger.ms": "1"}))
    return flow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    stop = stop_on_signals()
    cli_main(passthrough_flow(args.bootstrap, args.events, args.out, stop))  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
