"""Live journey measurement: the shards' counts in Redis equal a replay's report, and a
crash between two batches neither loses nor doubles a count (flows.pipeline.measures)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.experiments import HOLDOUT
from engine.journeys import Engine
from engine.measurement import TREATED, rows, tally
from engine.replay import replay
from engine.rules.loader import load_rules
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.shard import ShardLogic
from flows.retry import RedisClient
from flows.stores.measures import read_counts, read_measures
from tests.engine.test_measurement import (
    DAY,
    RULES,
    SEGMENT_RULES,
    run,
    segment_log,
    the_log,
)
from tests.flows.pipeline.support import NOW, Pipeline, commits_ran, event, message, quiet

pytestmark = pytest.mark.integration

SIGNUP_TEST = """\
version: 1
consent: {email: opt_out, push: opt_out}
journeys:
  - id: welcome
    trigger: signup
    holdout: 10%
    goal: {event: purchase, within: 3d}
    steps:
      - split: {a: 50, b: 50}
        a:
          - send: email
        b:
          - send: push
"""


def test_live_report_equals_the_replay_report(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    lines = the_log(start=NOW - 10 * DAY, received=NOW)
    actions, measures = run(lines, received=NOW)
    expected = rows(tally(actions, measures))
    pipeline = Pipeline.create(store_client, kafka_bootstrap, unique, RULES)
    docs = [orjson.loads(line) for line in lines]
    pipeline.run_holding([message(i, d) for i, d in enumerate(docs)], lambda: quiet(pipeline))
    assert read_measures(pipeline.client, pipeline.keys) == expected
    assert next(r for r in expected if r.step == "" and r.variant == "a").clicked == 1
    assert read_measures(pipeline.client, pipeline.keys, "nope") == []


def test_a_crash_between_batches_neither_loses_nor_doubles_a_count(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    pipeline = Pipeline.create(store_client, kafka_bootstrap, unique, SIGNUP_TEST, shards=1)
    docs = [event(i, f"u{i}", "signup", NOW - 60_000 + i) for i in range(40)]
    docs += [event(40 + i, f"u{i}", "purchase", NOW - 1000 + i) for i in range(0, 40, 3)]
    config = pipeline.config()
    decode = decode_stamped(config.watermark)
    items = [decode(message(i, d)) for i, d in enumerate(docs)]
    stamped: list[Any] = [i for i in items if isinstance(i, Stamped)]
    ShardLogic(config, 0).on_batch(stamped[:30])
    commits_ran()  # the first batch is in Redis; then the process is killed
    again = ShardLogic(pipeline.config(), 0)  # restarted: Bytewax resumes from offset 0
    again.on_batch(stamped)
    commits_ran()
    engine = Engine(load_rules(SIGNUP_TEST, "rules.yaml"))
    engine.measures = []
    replayed = replay(engine, [orjson.dumps(d) for d in docs], received=NOW)
    assert read_counts(pipeline.client, pipeline.keys) == tally(replayed, engine.measures)
    live = read_measures(pipeline.client, pipeline.keys)
    star = next(r for r in live if r.variant == TREATED)
    held = next(r for r in live if r.variant == HOLDOUT and not r.step)
    assert (star.entered + held.entered, star.converted + held.converted) == (40, 14)


def test_live_segment_rows_equal_the_replay_rows(
    store_client: RedisClient, kafka_bootstrap: str, unique: str
) -> None:
    lines = segment_log(start=NOW - 10 * DAY)
    engine = Engine(load_rules(SEGMENT_RULES, "rules.yaml"))
    engine.measures = []
    expected = rows(tally(replay(engine, lines, received=NOW), engine.measures))
    assert any(r.segment == "buyer" for r in expected)
    pipeline = Pipeline.create(store_client, kafka_bootstrap, unique, SEGMENT_RULES)
    docs = [orjson.loads(line) for line in lines]
    pipeline.run(message(i, d) for i, d in enumerate(docs))
    assert read_measures(pipeline.client, pipeline.keys) == expected
