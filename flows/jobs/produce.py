"""``tetik produce FILE [--topic T] [--restamp]``: send a JSONL file of events to Kafka.

Rules of this interface:

* Every non-blank line is one record, keyed by its identity
  (:func:`flows.kafka.producer.identity_of`), sent as-is: bad lines too, so a
  file can exercise the dead-letter path.
* ``topic`` defaults to the events topic; missing topics (the layout of
  :meth:`flows.settings.Settings.topic_layout`, and ``topic``) are created first.
* ``restamp`` shifts every event's ``ts`` by one amount so the latest is now,
  keeping the gaps between events (:func:`restamp`): a log generated or
  recorded long ago then reads as fresh to a live engine. A restamped ``ts``
  is written as epoch ms; lines that are not JSON objects with a readable
  ``ts`` are sent unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from engine.errors import ConfigError
from engine.events import parse_ts
from flows.jobs.progress import Line
from flows.kafka.producer import identity_of, produce_records
from flows.kafka.topics import ensure_topics
from flows.report import say
from flows.settings import from_env


def produce_file(
    path: str, rate: float = 0.0, topic: str | None = None, restamp_now: bool = False
) -> int:
    """Send every line of a JSONL file to ``topic`` (default: the events topic);
    ``rate`` > 0 paces them (records/s); ``restamp_now`` shifts them to end now."""
    settings = from_env()
    if not settings.kafka_bootstrap:
        raise ConfigError("set TETIK_KAFKA_BOOTSTRAP to the Kafka the engine reads from")
    target = topic or settings.events_topic
    layout = {target: settings.events_partitions, **settings.topic_layout()}
    try:  # before Kafka is asked anything: a wrong path fails at once
        lines = [line for line in Path(path).read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; give a JSONL file") from None
    ensure_topics(settings.kafka_bootstrap, layout, timeout=settings.kafka_timeout_s)
    if restamp_now:
        lines = restamp(lines, time.time_ns() // 1_000_000)
    records = ((identity_of(line), line) for line in lines)
    progress = Line()
    try:
        sent = produce_records(
            settings.kafka_bootstrap,
            target,
            records,
            rate=rate,
            on_progress=lambda n: progress.update(f"tetik: sent {n:,}"),
        )
    finally:
        progress.close()
    say(f"sent {sent:,} records to {target}")
    return 0


def restamp(lines: Iterable[bytes], now_ms: int) -> list[bytes]:
    """``lines`` with every readable ``ts`` shifted so the latest is ``now_ms`` (gaps
    kept, written as epoch ms); other lines unchanged."""
    lines = list(lines)
    stamps = [ts for _, ts in _stamps(lines)]
    if not stamps:
        return lines
    shift = now_ms - max(stamps)
    out = list(lines)
    for i, ts in _stamps(lines):
        doc = orjson.loads(lines[i])
        doc["ts"] = ts + shift
        out[i] = orjson.dumps(doc)
    return out


def _stamps(lines: list[bytes]) -> Iterator[tuple[int, int]]:
    """(index, ts in epoch ms) of each line whose ``ts`` reads."""
    for i, line in enumerate(lines):
        ts = _ts_of(line)
        if ts is not None:
            yield i, ts


def _ts_of(line: bytes) -> int | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    ts = doc.get("ts") if isinstance(doc, dict) else None
    if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0:
        return ts
    if isinstance(ts, str):
        try:
            return parse_ts(ts)
        except ValueError:
            return None
    return None
