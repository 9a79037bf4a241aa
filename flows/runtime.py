"""The rules a running engine uses, switched without a restart.

Rules of this interface:

* :meth:`RulesRuntime.current` is called at every batch boundary (and timer
  wake-up) of every worker. It asks the :class:`~flows.rulestore.RulesWatcher`
  (at most one Redis GET per interval, 200 ms by default) whether another
  version became active; if so it compiles it and switches with
  :meth:`engine.journeys.Engine.successor`, so enrollments in flight keep
  their version. A batch runs on one version from start to end.
* A version that fails to compile here (it was validated at push, so only a
  bug or a tampered store can do this) is reported once and skipped: the
  running version stays live.
* Thread-safe: a process's workers share one runtime.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable

from engine.errors import TetikError
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.windows import DEFAULT_CONFIG, WindowConfig
from flows.rulestore import RulesStore, RulesVersion, RulesWatcher

RETAINED_VERSIONS = 20  # older versions kept compiled for enrollments still in flight


def _report(line: str) -> None:
    print(f"tetik run: {line}", file=sys.stderr, flush=True)


class RulesRuntime:
    """The engine of the active rules version (see the module rules)."""

    def __init__(
        self,
        engine: Engine,
        watcher: RulesWatcher | None = None,
        report: Callable[[str], None] = _report,
    ) -> None:
        self._engine = engine
        self._watcher = watcher
        self._report = report
        self._lock = threading.Lock()
        self.switches = 0

    @classmethod
    def from_store(
        cls, store: RulesStore, windows: WindowConfig = DEFAULT_CONFIG, interval_ms: int = 200
    ) -> RulesRuntime:
        """The active version of ``store``, with its predecessors retired beside it."""
        active = store.active()
        if active is None:
            raise TetikError("no rules are active: push a rules file with `tetik rules push FILE`")
        engine: Engine | None = None
        older = [v for v in store.versions(with_text=True) if v.version != active.version]
        for version in [*older[-RETAINED_VERSIONS:], active]:
            rules = load_rules(version.text, version.filename)
            engine = Engine(rules, windows) if engine is None else engine.successor(rules)
        assert engine is not None
        watcher = RulesWatcher(store, interval_ms=interval_ms)
        watcher.poll()  # the active version is the one compiled above
        return cls(engine, watcher)

    @property
    def engine(self) -> Engine:
        """The engine now, without asking the store."""
        return self._engine

    def current(self) -> Engine:
        """The engine to run this batch on, switching first if a new version is active."""
        if self._watcher is None:
            return self._engine
        with self._lock:
            version = self._watcher.poll()
            if version is not None and version.hash != self._engine.version:
                self._switch(version)
            return self._engine

    def _switch(self, version: RulesVersion) -> None:
        try:
            rules = load_rules(version.text, version.filename)
        except TetikError as exc:
            self._report(
                f"rules version {version.version} does not compile; staying on "
                f"{self._engine.version}: {exc}"
            )
            return
        self._engine = self._engine.successor(rules)
        self.switches += 1
        self._report(f"switched to rules version {version.version} ({version.hash})")

    def drain_ended(self) -> Counter[str]:
        """Enrollments ended by version changes since the last call, by reason."""
        with self._lock:
            total: Counter[str] = Counter()
            for engine in (self._engine, *self._engine.retired.values()):
                total.update(engine.ended)
                engine.ended.clear()
            return total
