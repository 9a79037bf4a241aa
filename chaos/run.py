"""One deployment under test: the engine, its storefront and its reader, on a scenario's servers.

Rules of this interface:

* A :class:`Deployment` has its own topics (created before the engine
  starts, with the partition counts the engine's settings give them)
  and Redis prefix (``chaos`` + 8 hex digits), and its own directory under
  the scenario's (named like the prefix) for the rules file, the engine's log
  and its recovery snapshots.
* :meth:`Deployment.wait` is the only way a scenario lets time pass: it keeps
  the engine supervised (an exit nobody asked for is recorded and the engine
  restarted) and the progress line fresh.
* :meth:`Deployment.drain` stops the storefront, computes what replay expects
  from the log as produced, and waits until every expected action is out (or
  the deadline: the last event, plus the longest journey, plus ``drain_s``),
  then a little more so late duplicates are seen too.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chaos.child import Engine
from chaos.compare import Emitted
from chaos.feed import Feed
from chaos.watch import Watch
from chaos.workload import LONGEST_JOURNEY_MS, RULES, Outgoing
from engine.actions import to_dict
from engine.journeys import Engine as Core
from engine.replay import replay
from engine.rules.loader import load_rules
from flows.kafka.topics import ensure_topics
from flows.settings import from_env

__all__ = ["Deployment", "expected_actions"]

SETTLE_S = 2.0  # after the last expected action: time for a late duplicate to show
TICK_S = 0.1


def expected_actions(lines: list[bytes]) -> list[dict[str, Any]]:
    """What ``tetik replay --drain --include-suppressed`` computes for ``lines``."""
    core = Core(load_rules(RULES, "chaos.yaml"))
    return [to_dict(a) for a in replay(core, lines, drain=True)]


class Deployment:
    """The engine, its feed and its watch on one set of servers (see the module rules)."""

    def __init__(
        self,
        redis_url: str,
        bootstrap: str,
        workdir: Path,
        records: Iterator[Outgoing],
        *,
        rate: float,
        limit: int | None = None,
        hold_after: int = 0,
        engine_args: tuple[str, ...] = (),
    ) -> None:
        self.name = f"chaos{uuid.uuid4().hex[:8]}"
        self.workdir = workdir = workdir / self.name  # a fresh recovery dir every time
        workdir.mkdir(parents=True, exist_ok=True)
        env = self.env(redis_url, bootstrap)
        layout = from_env(env).topic_layout()  # the engine's own topics and counts
        ensure_topics(bootstrap, layout)
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        self.redis_url = redis_url
        self.engine = Engine(env, workdir, rules, engine_args)
        self.feed = Feed(
            bootstrap, self.events, records, rate=rate, limit=limit, hold_after=hold_after
        )
        read = {topic: layout[topic] for topic in (self.actions, self.dlq)}
        self._bootstrap, self._read = bootstrap, read
        self.watch = Watch(bootstrap, read, self.actions)
        self.on_tick: Callable[[], None] = lambda: None
        self.expected: list[dict[str, Any]] = []
        self.drain_s: float | None = None
        self.progress = 0.0  # share of the scenario's faults injected so far

    @property
    def events(self) -> str:
        return f"{self.name}.events"

    @property
    def dlq(self) -> str:
        return f"{self.name}.events.dlq"

    @property
    def actions(self) -> str:
        return f"{self.name}.actions"

    def env(self, redis_url: str, bootstrap: str) -> dict[str, str]:
        return {
            **os.environ,
            "TETIK_REDIS_URL": redis_url,
            "TETIK_KAFKA_BOOTSTRAP": bootstrap,
            "TETIK_PREFIX": self.name,
            "TETIK_EVENTS_TOPIC": self.events,
            "TETIK_DLQ_TOPIC": self.dlq,
            "TETIK_ACTIONS_TOPIC": self.actions,
            "TETIK_ACTIONS_DLQ_TOPIC": f"{self.name}.actions.dlq",
        }

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass, supervising the engine."""
        end = time.monotonic() + seconds
        while True:
            self.engine.supervise()
            self.on_tick()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(TICK_S, left))

    def drain(self, drain_s: float) -> list[dict[str, Any]]:
        """Stop feeding, compute replay's answer, wait for it (see the module rules)."""
        self.feed.finish()
        self.expected = expected_actions(self.feed.valid_lines())
        want = {a["action_id"] for a in self.expected}
        started = time.monotonic()
        due_ms = self.feed.last_ts + LONGEST_JOURNEY_MS - time.time_ns() // 1_000_000
        deadline = started + max(0.0, due_ms / 1000) + drain_s
        while not want <= self.watch.action_ids() and time.monotonic() < deadline:
            self.wait(0.25)
        if want <= self.watch.action_ids():
            self.drain_s = round(time.monotonic() - started, 2)
        self.wait(SETTLE_S)
        return self.expected

    def reread(self, idle_s: float = 2.0, limit_s: float = 60.0) -> list[Emitted]:
        """Every action on the topic, read afresh after the run (the tally's ground truth).

        The live watch rides out broker restarts on the client's reconnects;
        a fresh reader after the run cannot be fooled by one that did not.
        """
        fresh = Watch(self._bootstrap, self._read, self.actions)
        fresh.start()
        started = last_change = time.monotonic()
        seen = -1
        while time.monotonic() - last_change < idle_s and time.monotonic() - started < limit_s:
            time.sleep(0.25)
            count = len(fresh.actions())
            if count != seen:
                seen, last_change = count, time.monotonic()
        fresh.stop()
        return fresh.actions()

    def close(self) -> int | None:
        """Stop the engine (SIGTERM) and the reader; the engine's exit code."""
        code = self.engine.stop()
        self.watch.stop()
        if self.feed.is_alive():
            self.feed.finish(5)
        return code
