"""Commits run behind the worker: until one lands, its shard reads what it wrote from
memory, never the older state still in Redis.

The committer here runs a commit only when the shard waits for it (so "not landed
yet" is certain), and the shard keeps no cache. In one wake-up the shard applies a
queued derived event to a shopper whose wait step is due (the step fires with it),
then runs its timer pass, which finds the shopper in Redis's timer index (the commit
moving it has not run): read from Redis, the state would fire the step a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest

from engine.events import Event
from flows.pipeline.decode import Stamped, decode_stamped
from flows.pipeline.shard import ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.states import ShardStore
from tests.flows.pipeline.support import NOW, Pipeline, event, message

pytestmark = pytest.mark.integration

RULES = """\
version: 1
consent: {email: opt_out, push: opt_out}
journeys:
  - id: welcome
    trigger: signup
    steps:
      - wait: 1m
      - send: email
  - id: look
    trigger: view_product
    steps:
      - send: push
"""


class _OnDemand(Future[Any]):
    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__()
        self._call = call

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self._call())
            except BaseException as exc:  # handed to the waiter, as an Executor does
                self.set_exception(exc)
        return super().result(timeout)


class OnDemand(Executor):
    """Runs a submitted call only when its result is asked for."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return _OnDemand(lambda: fn(*args, **kwargs))


@pytest.fixture
def pipeline(store_client: RedisClient, kafka_bootstrap: str, unique: str) -> Pipeline:
    return Pipeline.create(store_client, kafka_bootstrap, unique, RULES, shards=1)


def channels(reports: Any) -> list[str]:
    found = []
    for report in reports:
        assert isinstance(report, ShardReport)
        found.extend(a.channel for a in report.actions)
    return found


def test_a_shard_reads_what_it_wrote_until_the_commit_lands(pipeline: Pipeline) -> None:
    config = pipeline.config(committer=OnDemand(), cache_users=0)
    logic = ShardLogic(config, 0)
    store = ShardStore(pipeline.client, pipeline.keys.shard(0), 0)
    decode = decode_stamped(config.watermark)
    signup = decode(message(0, event(0, "ann", "signup", NOW - 5 * 60_000)))
    assert isinstance(signup, Stamped)
    assert channels(logic.on_batch([signup])[0]) == []  # the e-mail waits a minute
    logic.snapshot()  # an epoch closes: the commit lands
    config.watermark.polled("0-events", 0, True)
    before = store.load("ann")
    assert before is not None

    look = Event(
        event_id="derived-1", type="view_product", ts=NOW - 60_000, user_id="ann",
        product_id="p1", price=5.0,
    )  # fmt: skip
    reports = list(logic.on_batch([Stamped(look, NOW)])[0])  # derived: no partition
    assert store.load("ann") == before  # the commit has not run
    assert sorted(channels(reports)) == ["email", "push"]  # the step fired once, not twice
    logic.snapshot()
    after = store.load("ann")
    assert after is not None
    assert after.events == 2
