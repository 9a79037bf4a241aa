"""``tetik segments --live [--count | --export NAME]``: memberships from Redis (SPEC 9).

Rules of this interface:

* The rules are the active version of the rules store (``TETIK_REDIS_URL``
  names the Redis the engine writes to); ``now`` is the wall clock.
* Watched segments (those a journey triggers on) are kept live, per shard, in
  a set of members (:mod:`flows.pipeline.books`). ``--count`` prints
  ``NAME: COUNT`` per segment in file order on stdout, summed over the shards'
  sets (``SCARD``); an unwatched segment has no set, so its line says so and
  how to evaluate it (``NAME: not kept live ...``) rather than print a count
  that is not one.
* ``--export NAME`` writes one JSON line per member of a watched segment,
  sorted by ``user_id``, in the format of ``tetik segments`` (``user_id``,
  ``segments``: every segment evaluated at now, ``rfm``), reading only the
  members' states. An unwatched or unknown NAME is refused (exit 2) with a
  line that says what to do.
* Without either, every known shopper's line (as ``tetik segments`` writes
  them after a replay): the shards' shopper indexes are read in pages of
  1,000 (each page's states in one ``MGET``) and merged in ``user_id`` order,
  every segment evaluated at now from the state, ``rfm`` scored against the
  latest stored boundaries (none before the first refresh); counts per
  segment on stderr.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from engine.errors import ConfigError
from engine.rfm import RfmBook, rfm_inputs, score
from engine.rules.loader import load_rules
from engine.rules.model import Rules
from engine.segments import members_at, watched_names
from engine.state import UserState, loads
from engine.windows import WindowConfig, with_timezone
from flows.clock import wall_ms
from flows.jobs.segment_report import rfm_view
from flows.pipeline.rfm_live import stored_bounds
from flows.retry import RedisClient, connect
from flows.settings import from_env
from flows.stores.keys import Keys, ShardKeys
from flows.stores.rules import RulesStore
from flows.stores.states import ShardStore

PAGE = 1_000


def run_live_segments(*, count: bool, export: str | None, out: BinaryIO | None = None) -> int:
    """``tetik segments --live``; exit 2 for a usage problem (see the module rules)."""
    settings = from_env()
    if not settings.redis_url:
        raise ConfigError("--live reads the engine's Redis: set TETIK_REDIS_URL to it")
    client = connect(settings.redis_url)
    active = RulesStore(client, settings.prefix).active()
    if active is None:
        raise ConfigError("no rules are active: push a rules file with `tetik rules push FILE`")
    rules = load_rules(active.text, active.filename)
    sink = out if out is not None else sys.stdout.buffer
    keys = settings.keys
    if count:
        sink.write("".join(f"{line}\n" for line in count_lines(client, keys, rules)).encode())
        sink.flush()
        return 0
    book = RfmBook()
    for bounds in stored_bounds(client, keys):
        book.add(bounds)
    now = wall_ms()
    if export is not None:
        problem = _export_problem(rules, export)
        if problem:
            print(f"tetik segments: {problem}", file=sys.stderr)
            return 2
        identities: Iterator[str] = heapq.merge(
            *(_sorted_members(client, shard, export) for shard in keys.all_shards())
        )
    else:
        identities = heapq.merge(*(_shoppers(client, shard) for shard in keys.all_shards()))
    counts = dict.fromkeys(rules.segments, 0)
    users = 0
    windows = with_timezone(settings.windows, rules.timezone)  # as the engine reads them
    for state in _states(client, keys, identities):
        row = _row(rules, state, now, book, windows)
        for name in row["segments"]:
            counts[name] += 1
        users += 1
        sink.write(orjson.dumps(row) + b"\n")
    sink.flush()
    for name, found in counts.items():
        print(f"{name}: {found:,}", file=sys.stderr)
    print(f"segments: {users:,} users at {now} (live)", file=sys.stderr)
    return 0


def count_lines(client: RedisClient, keys: Keys, rules: Rules) -> list[str]:
    """``NAME: COUNT`` per segment, in file order (see the module rules)."""
    watched = set(watched_names(rules))
    lines = []
    for name in rules.segments:
        if name not in watched:
            lines.append(
                f"{name}: not kept live (no journey triggers on it); "
                "`tetik segments --live` evaluates it from the states"
            )
            continue
        pipe = client.pipeline(transaction=False)
        for shard in keys.all_shards():
            pipe.scard(shard.segment(name))
        lines.append(f"{name}: {sum(int(n) for n in pipe.execute())}")
    return lines


def _export_problem(rules: Rules, name: str) -> str:
    if name not in rules.segments:
        known = ", ".join(rules.segments) or "none"
        return f"--export {name}: the active rules have no segment {name!r} (segments: {known})"
    if name not in watched_names(rules):
        return (
            f"--export {name}: segment {name!r} is not kept live (no journey triggers on it); "
            "`tetik segments --live` writes every shopper's segments, evaluated from the states"
        )
    return ""


def _sorted_members(client: RedisClient, shard: ShardKeys, name: str) -> Iterator[str]:
    store = ShardStore(client, shard, 0)
    found: list[str] = []
    cursor = None
    while cursor != 0:
        cursor, page = store.members(name, cursor or 0, PAGE)
        found.extend(page)
    return iter(sorted(set(found)))


def _shoppers(client: RedisClient, shard: ShardKeys) -> Iterator[str]:
    store = ShardStore(client, shard, 0)
    cursor = ""
    while True:
        page = store.shoppers_after(cursor, PAGE)
        yield from page
        if len(page) < PAGE:
            return
        cursor = page[-1]


def _states(client: RedisClient, keys: Keys, identities: Iterator[str]) -> Iterator[UserState]:
    page: list[str] = []
    for identity in identities:
        page.append(identity)
        if len(page) == PAGE:
            yield from _read(client, keys, page)
            page = []
    yield from _read(client, keys, page)


def _read(client: RedisClient, keys: Keys, identities: list[str]) -> Iterator[UserState]:
    if not identities:
        return
    pipe = client.pipeline(transaction=False)
    for identity in identities:
        pipe.get(keys.state(identity))
    for raw in pipe.execute():
        if raw is not None:
            state = loads(raw)
            if state.events:
                yield state


def _row(
    rules: Rules, state: UserState, now: int, book: RfmBook, windows: WindowConfig
) -> dict[str, Any]:
    latest = book.at(now)
    found = None if latest is None else score(latest, rfm_inputs(state))
    names = members_at(rules, state, now, book, windows, found)
    return {"user_id": state.key, "segments": names, "rfm": rfm_view(found)}
