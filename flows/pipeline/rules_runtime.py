"""The rules a running engine uses, switched without a restart.

Rules of this interface:

* :meth:`RulesRuntime.current` is called at every batch boundary (and timer
  wake-up) of every worker. It asks the :class:`~flows.rulestore.RulesWatcher`
  (at most one Redis GET per interval, 200 ms by default) whether another
  version became active. It never compiles: a new version is compiled on a
  background thread, one version at a time, together with its engine
  (:meth:`engine.journeys.Engine.successor`, so enrollments in flight keep
  their version); the first :meth:`current` after it is ready switches to it.
  Until then batches keep running on the version before. A batch runs on one
  version from start to end.
* Only the newest activation counts: a version activated while another is
  compiling is compiled next, and one that is ready but no longer active (a
  rollback, a newer push) is dropped. Activating the running version again
  cancels a pending switch.
* A version that fails to compile here (it was validated at push, so only a
  bug or a tampered store can do this) is reported once and skipped: the
  running version stays live.
* Each version's engine is given the moment it took over (its latest
  activation in the store's history, :func:`activated_at`), so a broadcast
  whose instant came before that is not sent late
  (:class:`engine.broadcasts.Broadcasts`); :attr:`RulesRuntime.activated_at`
  says it for the running version (the sweep after a version change keys its
  run on it, :mod:`flows.pipeline.segment_sweeps`).
* Thread-safe: a process's workers share one runtime.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from engine.errors import TetikError
from engine.journeys import Engine
from engine.rules.loader import load_rules
from engine.windows import DEFAULT_CONFIG, WindowConfig
from flows.report import say
from flows.stores.rules import RulesStore, RulesVersion, RulesWatcher

RETAINED_VERSIONS = 20  # older versions kept compiled for enrollments still in flight


def _report(line: str) -> None:
    say(f"run: {line}")


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
        self._wanted: RulesVersion | None = None  # activated, not compiled yet
        self._ready: tuple[RulesVersion, Engine] | None = None  # compiled, not switched to
        self._generation = 0  # bumped by each activation; stale compiles are dropped
        self._compiler: threading.Thread | None = None
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
        older = [
            v
            for v in store.versions(with_text=True)
            if v.version != active.version and not store.signature_problem(v)
        ]
        for version in older[-RETAINED_VERSIONS:]:
            rules = load_rules(version.text, version.filename)
            engine = Engine(rules, windows) if engine is None else engine.successor(rules)
        rules = load_rules(active.text, active.filename)
        at = activated_at(store, active.version)
        engine = (
            Engine(rules, windows, activated_at=at)
            if engine is None
            else engine.successor(rules, at)
        )
        assert engine is not None
        watcher = RulesWatcher(store, interval_ms=interval_ms)
        watcher.poll()  # the active version is the one compiled above
        return cls(engine, watcher)

    @property
    def engine(self) -> Engine:
        """The engine now, without asking the store."""
        return self._engine

    @property
    def activated_at(self) -> int | None:
        """When the running version took over (epoch ms; None: not known, e.g. tests)."""
        return self._engine.activated_at

    @property
    def compiling(self) -> bool:
        """Whether a version is being compiled, or is compiled and not switched to yet."""
        with self._lock:
            return self._compiler is not None or self._ready is not None

    @property
    def windows(self) -> WindowConfig:
        """The state's bounds every version runs with (they come from the settings)."""
        return self._engine.windows

    def current(self) -> Engine:
        """The engine to run this batch on, switching first if a new version is ready."""
        if self._watcher is None:
            return self._engine
        with self._lock:
            if self._ready is not None:
                self._switch(*self._ready)
            version = self._watcher.poll()
            if version is not None:
                self._activated(version)
            return self._engine

    def _switch(self, version: RulesVersion, engine: Engine) -> None:
        self._ready = None
        self._engine = engine
        self.switches += 1
        self._report(f"switched to rules version {version.version} ({version.hash})")

    def _activated(self, version: RulesVersion) -> None:
        """Called with the lock held: compile ``version`` next (or nothing: it runs)."""
        self._generation += 1
        self._ready = None
        self._wanted = None if version.hash == self._engine.version else version
        if self._wanted is not None and self._compiler is None:
            self._compiler = threading.Thread(
                target=self._compile_loop, name="tetik-rules-compile", daemon=True
            )
            self._compiler.start()

    def _compile_loop(self) -> None:
        """The background thread: compile the wanted versions until none is left."""
        while True:
            with self._lock:
                version, generation, base = self._wanted, self._generation, self._engine
                self._wanted = None
                if version is None:
                    self._compiler = None
                    return
            engine = self._compile(version, base)
            with self._lock:
                if engine is None or generation != self._generation:
                    continue  # failed (reported), or another version was activated meanwhile
                if base is not self._engine:  # cannot happen with one compiler; stay safe
                    self._wanted = version
                    continue
                self._ready = (version, engine)

    def _compile(self, version: RulesVersion, base: Engine) -> Engine | None:
        try:
            watcher = self._watcher
            at = None if watcher is None else activated_at(watcher.store, version.version)
            return base.successor(load_rules(version.text, version.filename), at)
        except Exception as exc:  # a tampered store must not kill the compiler
            detail = str(exc) if isinstance(exc, TetikError) else f"{type(exc).__name__}: {exc}"
            self._report(
                f"rules version {version.version} does not compile; staying on "
                f"{base.version}: {detail}"
            )
            return None

    def drain_ended(self) -> Counter[str]:
        """Enrollments ended by version changes since the last call, by reason."""
        with self._lock:
            total: Counter[str] = Counter()
            for engine in (self._engine, *self._engine.retired.values()):
                total.update(engine.ended)
                engine.ended.clear()
            return total


def activated_at(store: RulesStore, version: int) -> int | None:
    """When ``version`` last became active (epoch ms), from the store's history."""
    for entry in reversed(store.history(limit=5)):
        if entry.version == version:
            return entry.at
    return None
