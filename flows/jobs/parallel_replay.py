"""A replay on several cores: the log's independent parts, each replayed in its own process.

Rules of this interface:

* :func:`replay_parallel` takes :func:`engine.replay.replay`'s arguments plus
  ``workers`` and returns what ``replay`` returns: the same actions in SPEC
  order and the same :class:`~engine.replay.ReplayStats`; ``engine.measures``
  (when a list) ends up with the same measures, part by part rather than in
  the single run's order (their tally is the same).
* This process decodes the log (bad lines reported as ``replay`` reports
  them) and cuts it by identity (:mod:`engine.partition`); each part is
  replayed at the whole log's clock, the first in this process and each
  other in a forked worker. The workers inherit the engine and their part,
  nothing is pickled on the way in; each sends back its actions, measures and
  counts as one MessagePack message. (This process takes a part rather than
  waiting: on a 1M-event report with two cores the parts took 12.2 s instead
  of 12.7, fewer pages being copied on write.)
* It runs as one ``replay`` in this process when ``workers`` is 1 or less,
  when the log has fewer than ``min_events`` events (forking costs more),
  when fork is not available, when the log's users are not independent
  (:func:`engine.partition.independent`: product updates,
  ``bought_together``, ``rfm()``), and again from the start when a worker
  failed or left an event out as a poison event (so a poison event is left
  out exactly as one run leaves it out).
* Progress: the decode's line (the caller's ``lines``), then one line of
  events applied across the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

import msgspec

from engine.actions import Action
from engine.experiments import Measure
from engine.journeys import Engine, replay_order
from engine.partition import Part, independent, partition
from engine.replay import ReplayStats, decode_log, paused_collector, replay_events
from flows import logs
from flows.jobs.progress import Line, Rate

MIN_EVENTS = 50_000  # below this, one process is faster than forking
MAX_WORKERS = 8


def default_workers() -> int:
    """The cores this process may run on, at most :data:`MAX_WORKERS`."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


class _Result(msgspec.Struct, kw_only=True):
    """What one part's replay gives back (a worker sends it as MessagePack)."""

    actions: list[Action]
    measures: list[Measure] | None
    stats: ReplayStats


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Result).decode


def replay_parallel(
    engine: Engine,
    lines: Iterable[bytes],
    *,
    workers: int | None,
    until: int | None = None,
    drain: bool = False,
    on_error: Callable[[int, str], None] = lambda _n, _r: None,
    stats: ReplayStats | None = None,
    min_events: int = MIN_EVENTS,
) -> list[Action]:
    """``replay`` on up to ``workers`` processes (None: :func:`default_workers`; see the
    module rules)."""
    workers = default_workers() if workers is None else workers
    stats = stats if stats is not None else ReplayStats()
    received = time.time_ns() // 1_000_000
    with paused_collector():  # the decode and the cut too (engine.replay, module rules)
        events = list(decode_log(lines, on_error, stats, received, engine.windows, until))
        one = workers <= 1 or len(events) < min_events or not _can_fork()
        joined = None if one else independent(engine, events)
        if joined is not None:
            logs.INPUT.info("replay in one process: %s", joined)
        if one or joined is not None:
            return replay_events(engine, events, until=until, drain=drain, stats=stats)
        parts = partition(events, workers, until)
        results = _run_parts(engine, parts, drain, until)
        if results is None or any(result.stats.failed for result in results):
            return replay_events(engine, events, until=until, drain=drain, stats=stats)
        return _merge(engine, results, parts, stats, until)


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _run_parts(
    engine: Engine, parts: list[Part], drain: bool, until: int | None
) -> list[_Result] | None:
    """The first part here, each other in a forked worker; their results in part
    order, or None when a worker died."""
    context = multiprocessing.get_context("fork")
    done = context.Value("q", 0)
    pipes, workers = [], []
    sys.stdout.flush()  # a worker flushes its copy of what is buffered when it ends
    sys.stderr.flush()
    for part in parts[1:]:
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(
            target=_work, args=(engine, part, drain, until, done, send), daemon=True
        )
        worker.start()
        send.close()
        pipes.append(receive)
        workers.append(worker)
    progress = _Progress(done, sum(len(part.events) for part in parts), len(parts))
    collected = False
    try:
        ended = Counter(engine.ended)
        here = _replay_part(engine, parts[0], drain, until, progress.advanced)
        engine.ended.clear()  # _merge counts every part's, this one's too
        engine.ended.update(ended)
        others = _collect(pipes, progress)
        collected = True
        return None if others is None else [here, *others]
    finally:
        progress.close()
        for worker in workers:  # after Ctrl-C or an error here: stopped at once
            worker.join(timeout=5 if collected else 0)
            if worker.is_alive():
                worker.kill()


def _counter(done: Synchronized[int]) -> Callable[[int], None]:
    """``count(events)``: one process's part has applied ``events`` so far; adds the
    difference to the processes' shared count ``done``."""
    seen = 0

    def count(events: int) -> None:
        nonlocal seen
        with done.get_lock():
            done.value += events - seen
        seen = events

    return count


class _Progress:
    """Events applied across the processes (a shared counter), on one progress line."""

    def __init__(self, done: Synchronized[int], total: int, processes: int) -> None:
        self.done, self.total, self.processes = done, total, processes
        self.line, self.rate, self.started = Line(), Rate(), time.monotonic()
        self.count = _counter(done)

    def advanced(self, events: int) -> None:
        """This process's part has applied ``events`` so far."""
        self.count(events)
        self.show()

    def show(self) -> None:
        applied = self.done.value
        if applied and self.line.due():
            self.line.update(self._text(applied, self.rate.read(applied)))

    def close(self) -> None:
        applied = self.done.value
        seconds = max(time.monotonic() - self.started, 1e-9)
        self.line.close(self._text(applied, applied / seconds))

    def _text(self, applied: int, rate: float) -> str:
        return (
            f"replay: {applied:,} of {self.total:,} events applied in {self.processes} "
            f"processes ({rate:,.0f}/s)"
        )


def _collect(pipes: list[Connection], progress: _Progress) -> list[_Result] | None:
    """Every worker's result in part order, showing progress while they run."""
    results: dict[int, _Result] = {}
    while len(results) < len(pipes):
        for index, pipe in enumerate(pipes):
            if index in results or not pipe.poll(0.05):
                continue
            try:
                results[index] = _decode(pipe.recv_bytes())
            except EOFError:
                return None  # the worker died without a result
        progress.show()
    return [results[index] for index in range(len(pipes))]


def _work(
    engine: Engine,
    part: Part,
    drain: bool,
    until: int | None,
    done: Synchronized[int],
    send: Connection,
) -> None:
    """One forked worker: replay its part, send the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report
    send.send_bytes(_encode(_replay_part(engine, part, drain, until, _counter(done))))
    send.close()


def _replay_part(
    engine: Engine,
    part: Part,
    drain: bool,
    until: int | None,
    advanced: Callable[[int], None],
) -> _Result:
    """One part replayed at the whole log's clock."""
    stats = ReplayStats()
    actions = replay_events(
        engine, part.events, until=until, drain=drain, stats=stats, part=part, on_progress=advanced
    )
    advanced(stats.events)
    measures = None if engine.measures is None else list(engine.measures)
    return _Result(actions=actions, measures=measures, stats=stats)


def _merge(
    engine: Engine,
    results: list[_Result],
    parts: list[Part],
    stats: ReplayStats,
    until: int | None,
) -> list[Action]:
    """The parts' results as one run's (see the module rules)."""
    actions: list[Action] = []
    ended: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    if engine.measures is not None:
        del engine.measures[:]  # as one run starts (engine.replay.replay_events)
    for result in results:
        actions.extend(result.actions)
        if engine.measures is not None and result.measures is not None:
            engine.measures.extend(result.measures)
        part = result.stats
        stats.events += part.events
        stats.users += part.users
        stats.merged += part.merged
        stats.identity_conflicts += part.identity_conflicts
        ended.update(part.ended)
        counts.update(part.actions)
    engine.ended.update(ended)
    stats.ended = dict(ended)
    stats.actions = dict(counts)
    stats.clock = until if until is not None else parts[0].last
    return replay_order(actions)
