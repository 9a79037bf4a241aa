"""Bounded runs: the end of the input settles every identity link.

A bounded run (``tetik ingest`` without ``--tail``, ``tetik run`` with
``tail=False``) ends at the partitions' ends. Live, an anonymous id's shard
decides a link when the watermark passes the link event's time, and the
user's shard holds the user's events until the hand-off is there
(:mod:`flows.pipeline.identity`); at the end of a bounded input the
watermark stops short of the last links (their time may even be ahead of the
wall clock), so without this module their users' events would stay held.

Rules of this interface:

* Only at an end that means every event was read
  (:attr:`flows.pipeline.shard.ShardConfig.input_complete`: a bounded run
  not stopped by a signal or the dead-letter breaker). A live run's end (a
  stop) decides nothing early: the next start goes on as usual.
* **Decide** (the ``shards`` step's ``on_eof``): every event of an
  anonymous id is applied or kept by then, so each pending link of the shard
  is due: the id's timers fire up to the link's time, then the usual one
  commit links it, writes the hand-off and deletes its state.
* **Merge** (the ``settle`` step, :class:`SettleLogic`, after ``shards``):
  its end of input comes only once every shard of every worker and process
  has finished its own ``on_eof`` (the dataflow's frontier), so every
  link is decided. It then runs each shard's waiting users
  (:meth:`flows.pipeline.shard.ShardLogic.settle_waiting`): merges and held
  events in the usual commits, round after round while a round answers
  someone. Each shard is still written by one logic at a time: the
  ``shards`` step's logic is done with it.
* The job checks Redis afterwards (:func:`unsettled`) and fails with one
  line naming a user that still waits, if any.
* Exactly once: the same commits as live, so a crash anywhere in between is
  recovered as live recovers (a re-run re-reads, skips what the states
  reflect, and decides and merges what is left).
"""

from __future__ import annotations

from collections.abc import Iterable

from bytewax.operators import StatefulBatchLogic

from engine.errors import TetikError
from flows.pipeline.shard import ShardConfig, ShardLogic, ShardReport
from flows.retry import RedisClient
from flows.stores.keys import Keys
from flows.stores.states import ShardStore


class BoundedRunUnsettled(TetikError):
    """A bounded run ended with users waiting for a hand-off."""


class SettleLogic(StatefulBatchLogic[ShardReport, ShardReport, int]):
    """One shard in the ``settle`` step: passes the shard's reports on; at the end of
    a complete input, merges the shard's waiting users (see the module rules)."""

    def __init__(self, config: ShardConfig, shard: int | None = None) -> None:
        self._c = config
        self._shard = -1 if shard is None else shard

    def on_batch(self, values: list[ShardReport]) -> tuple[Iterable[ShardReport], bool]:
        self._shard = values[0].shard
        return values, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[ShardReport], bool]:
        complete = self._c.input_complete is not None and self._c.input_complete()
        if self._shard < 0 or not complete:
            return [], StatefulBatchLogic.RETAIN
        return ShardLogic(self._c, self._shard).settle_waiting(), StatefulBatchLogic.RETAIN

    def snapshot(self) -> int:
        return self._shard


def unsettled(client: RedisClient, keys: Keys) -> dict[str, str]:
    """Users still waiting for a hand-off, over every shard (user -> anonymous id)."""
    found: dict[str, str] = {}
    for shard in keys.all_shards():
        found.update(ShardStore(client, shard, 0).waiting())
    return found


def check_settled(client: RedisClient, keys: Keys, job: str) -> None:
    """After a bounded run (``job``: its command line): raise one line if a user still
    waits (see the module rules)."""
    waiting = unsettled(client, keys)
    if waiting:
        user, anon = next(iter(waiting.items()))
        raise BoundedRunUnsettled(
            f"{job}: the input ended with {len(waiting)} user(s) still waiting for an "
            f"identity hand-off (e.g. {user!r} for {anon!r}); their events after the login "
            f"are held, not applied. Run `{job}` again (it resumes and merges them); "
            "report it if they still wait"
        )
