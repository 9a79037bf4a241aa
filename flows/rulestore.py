"""Versioned rules in Redis: ``tetik rules push | list | rollback`` and the live switch.

Rules of this interface:

* A push is compiled with :func:`~engine.rules.loader.load_rules` before anything
  is written: a rejected file raises :class:`~engine.errors.RulesError` unchanged
  and Redis is untouched (the active version, the version list and the change
  counter stay as they were).
* Versions are numbered 1, 2, 3... per prefix and never deleted or edited. A
  version's ``hash`` is ``source_hash[:12]``, the ``rules_version`` its actions
  carry; the stored text is the file's exact bytes, so compiling
  :attr:`RulesVersion.text` again gives the same hash.
* Pushing the text of the active version creates nothing: :meth:`RulesStore.push`
  returns the active version (:meth:`RulesStore.push_or_keep` says it was
  kept) and writes, counts and publishes nothing. Pushing the text of an older,
  inactive version creates a new version noted ``same as version N``.
* Every activation (push or rollback) is one MULTI/EXEC transaction: it sets the
  active version, bumps the change counter, appends to the activation history and
  publishes the version number on ``{prefix}:rules:changed``. A crash leaves the
  whole activation or none of it. Concurrent pushes and rollbacks are serialised
  by WATCH on the active version and the sequence (a loser retries).
* :meth:`RulesStore.rollback` without a version re-activates the version that was
  active before the current one (as ``kubectl rollout undo``: twice in a row
  toggles back); with a version it re-activates that one. Rolling back to the
  active version changes nothing. An unknown version, or nothing to go back to,
  raises :class:`RollbackError` (a :class:`~engine.errors.ConfigError`).

Redis keys (``P`` is the prefix)::

    P:rules:seq      string  last version number given out (INCR)
    P:rules:meta     hash    version -> JSON {hash, who, at, journeys, filename, note}
    P:rules:text     hash    version -> the rules file's bytes
    P:rules:by_hash  hash    hash (12 hex) -> first version with that text
    P:rules:active   string  the active version number (the one GET engines poll)
    P:rules:changes  string  change counter: +1 per activation
    P:rules:history  list    JSON {version, who, at, action, previous}, oldest first
    P:rules:changed  channel the newly active version number, on every activation
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import redis
from redis.client import Pipeline

from engine.errors import ConfigError, RulesError
from engine.rules.loader import load_rules
from flows.settings import Settings, from_env

Clock = Callable[[], int]
Action = Literal["push", "rollback"]
HASH_LENGTH = 12


class RollbackError(ConfigError):
    """A rollback has no target: an unknown version, or no earlier version."""


def now_ms() -> int:
    """Wall-clock epoch milliseconds: when a version was pushed or activated."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """A clock for intervals only (never goes back when the wall clock is set)."""
    return time.monotonic_ns() // 1_000_000


def default_who() -> str:
    """``$USER@hostname``: who pushed, when ``--who`` is not given."""
    user = os.environ.get("USER") or _login_name()
    return f"{user}@{socket.gethostname()}"


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


@dataclasses.dataclass(frozen=True)
class RulesVersion:
    """One pushed rules file. ``text`` is "" in :meth:`RulesStore.versions` listings."""

    version: int
    hash: str
    who: str
    at: int
    journeys: int
    filename: str
    text: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Activation:
    """One entry of the history: ``version`` became active at ``at``."""

    version: int
    who: str
    at: int
    action: Action
    previous: int | None = None


class RulesStore:
    """Rules versions of one prefix in one Redis database (see the module rules)."""

    def __init__(self, client: redis.Redis, prefix: str = "tetik", clock: Clock = now_ms) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        base = f"{prefix}:rules"
        self.seq_key, self.meta_key, self.text_key = f"{base}:seq", f"{base}:meta", f"{base}:text"
        self.hash_key, self.active_key = f"{base}:by_hash", f"{base}:active"
        self.changes_key, self.history_key = f"{base}:changes", f"{base}:history"
        self.channel = f"{base}:changed"

    @classmethod
    def from_url(cls, url: str, prefix: str = "tetik") -> RulesStore:
        """A store on the Redis at ``url``."""
        return cls(redis.Redis.from_url(url), prefix)

    # -- reads ---------------------------------------------------------------

    def active_version(self) -> int | None:
        """The active version number, or None before the first push: one GET."""
        return _int(self.client.get(self.active_key))

    def active(self) -> RulesVersion | None:
        """The active version with its text, or None before the first push."""
        number = self.active_version()
        return None if number is None else self.get(number)

    def get(self, version: int) -> RulesVersion | None:
        """A version with its text (one round trip), or None if unknown."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.meta_key, str(version))
        pipe.hget(self.text_key, str(version))
        meta, text = pipe.execute()
        if meta is None:
            return None
        return _version(version, meta, _text(text))

    def by_hash(self, hash: str) -> RulesVersion | None:
        """The first version whose ``hash`` is ``hash[:12]`` (a full sha256 works too)."""
        number = _int(self.client.hget(self.hash_key, hash[:HASH_LENGTH]))
        return None if number is None else self.get(number)

    def versions(self, *, with_text: bool = False) -> list[RulesVersion]:
        """Every version, oldest first; ``text`` is "" unless ``with_text``."""
        raw: dict[Any, Any] = self.client.hgetall(self.meta_key)
        found = sorted((int(k), _version(int(k), v, "")) for k, v in raw.items())
        if not with_text:
            return [item for _, item in found]
        return [v for v in (self.get(number) for number, _ in found) if v is not None]

    def history(self, limit: int | None = None) -> list[Activation]:
        """Activations, oldest first; the last ``limit`` of them when given."""
        start = 0 if limit is None else -limit
        raw: list[Any] = self.client.lrange(self.history_key, start, -1)
        return [_activation(item) for item in raw]

    def changes(self) -> int:
        """How many activations there have been (0 before the first push)."""
        return _int(self.client.get(self.changes_key)) or 0

    # -- writes --------------------------------------------------------------

    def push(
        self, text: str | bytes, filename: str, who: str | None = None, note: str = ""
    ) -> RulesVersion:
        """Compile, store and activate; RulesError (nothing written) on a bad file."""
        return self.push_or_keep(text, filename, who, note)[0]

    def push_or_keep(
        self, text: str | bytes, filename: str, who: str | None = None, note: str = ""
    ) -> tuple[RulesVersion, bool]:
        """As :meth:`push`, with True when a version was created, False when the
        text is the active version's (returned as is)."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        rules = load_rules(data, filename)  # first: a bad file must write nothing
        draft = RulesVersion(
            version=0,
            hash=rules.source_hash[:HASH_LENGTH],
            who=who or default_who(),
            at=self.clock(),
            journeys=len(rules.journeys),
            filename=filename,
            text=data.decode("utf-8"),
            note=note,
        )
        result: tuple[RulesVersion, bool] = self._transaction(
            lambda pipe: self._push_in(pipe, draft, data)
        )
        return result

    def rollback(self, version: int | None = None, who: str | None = None) -> RulesVersion:
        """Re-activate ``version`` (None: the one active before the current one)."""
        actor = who or default_who()
        number = self._transaction(lambda pipe: self._rollback_in(pipe, version, actor))
        found = self.get(number)
        assert found is not None  # versions are never deleted
        return found

    # -- transactions (WATCH, reads, MULTI, writes, EXEC) ----------------------

    def _transaction(self, body: Callable[[Pipeline], Any]) -> Any:
        """Run ``body`` under WATCH of the sequence and the active version."""
        return self.client.transaction(
            body, self.seq_key, self.active_key, value_from_callable=True
        )

    def _push_in(
        self, pipe: Pipeline, draft: RulesVersion, data: bytes
    ) -> tuple[RulesVersion, bool]:
        active = _int(pipe.get(self.active_key))
        if active is not None and _bytes(pipe.hget(self.text_key, str(active))) == data:
            kept = self._get_in(pipe, active)
            return kept, False
        number = (_int(pipe.get(self.seq_key)) or 0) + 1
        same = _int(pipe.hget(self.hash_key, draft.hash))
        note = draft.note or ("" if same is None else f"same as version {same}")
        version = dataclasses.replace(draft, version=number, note=note)
        pipe.multi()
        pipe.incr(self.seq_key)  # the WATCH on seq makes this exactly ``number``
        pipe.hset(self.meta_key, str(number), _meta_json(version))
        pipe.hset(self.text_key, str(number), data)
        pipe.hsetnx(self.hash_key, version.hash, number)
        self._activate(pipe, Activation(number, version.who, version.at, "push", active))
        return version, True

    def _rollback_in(self, pipe: Pipeline, version: int | None, who: str) -> int:
        active = _int(pipe.get(self.active_key))
        target = self._target(pipe, active, version)
        if target == active:
            return target  # already active: nothing to write, nobody to wake
        pipe.multi()
        self._activate(pipe, Activation(target, who, self.clock(), "rollback", active))
        return target

    def _target(self, pipe: Pipeline, active: int | None, version: int | None) -> int:
        """The version a rollback goes to; RollbackError when there is none."""
        known = sorted(int(k) for k in pipe.hkeys(self.meta_key))
        if not known:
            raise RollbackError(
                "no rules have been pushed yet: push a file first (tetik rules push FILE)"
            )
        if version is not None:
            if version not in known:
                raise RollbackError(
                    f"no rules version {version} (known versions: {_listing(known)})"
                )
            return version
        last_two = [_activation(item) for item in pipe.lrange(self.history_key, -2, -1)]
        if len(last_two) < 2:
            raise RollbackError(
                f"nothing to roll back to: version {active} is the only one that has been active"
            )
        return last_two[0].version

    def _activate(self, pipe: Pipeline, entry: Activation) -> None:
        """Queue the writes that make ``entry.version`` active (inside MULTI)."""
        pipe.set(self.active_key, entry.version)
        pipe.incr(self.changes_key)
        pipe.rpush(self.history_key, orjson.dumps(dataclasses.asdict(entry)))
        pipe.publish(self.channel, str(entry.version))

    def _get_in(self, pipe: Pipeline, version: int) -> RulesVersion:
        """A version read on the watching connection (it exists: never deleted)."""
        meta = pipe.hget(self.meta_key, str(version))
        return _version(version, meta, _text(pipe.hget(self.text_key, str(version))))


class RulesWatcher:
    """Tells a running engine when the active rules version changed.

    Rules of this interface:

    * :meth:`poll` is cheap enough to call on every batch: it asks Redis at most
      once per ``interval_ms`` (one GET of the active version number, plus one
      round trip to load a version when the number changed) and otherwise
      returns None at once.
    * It returns the newly active version, with its text, once per change: the
      first successful check returns the active version (None while nothing has
      been pushed), later ones only a different version (a push or a rollback).
    * Redis being unavailable is not an error here: :meth:`poll` returns None,
      :attr:`current` keeps the last version seen, and the next interval retries.
      Give the store a client with short socket timeouts so a dead Redis does not
      stall a batch.
    * ``clock`` returns milliseconds and only measures intervals (monotonic).
    """

    def __init__(
        self, store: RulesStore, interval_ms: int = 200, clock: Clock = monotonic_ms
    ) -> None:
        self.store = store
        self.interval_ms = interval_ms
        self.clock = clock
        self._current: RulesVersion | None = None
        self._next_check: int | None = None  # None: check on the next poll

    @property
    def current(self) -> RulesVersion | None:
        """The last version :meth:`poll` returned (None before the first)."""
        return self._current

    def poll(self) -> RulesVersion | None:
        """The newly active version if it changed since the last poll, else None."""
        now = self.clock()
        if self._next_check is not None and now < self._next_check:
            return None
        self._next_check = now + self.interval_ms
        try:
            return self._check()
        except redis.RedisError:
            return None  # keep the current rules; the next interval tries again

    def _check(self) -> RulesVersion | None:
        number = self.store.active_version()
        if number is None or (self._current is not None and number == self._current.version):
            return None
        found = self.store.get(number)
        if found is not None:
            self._current = found
        return found


# -- the command line --------------------------------------------------------


def add_rules_commands(rules_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``push``, ``list`` and ``rollback`` under ``tetik rules``."""
    push = rules_sub.add_parser("push", help="store a rules file as a new version and activate it")
    push.add_argument("file")
    push.add_argument("--who", help="who pushes (default: $USER@hostname)")
    push.add_argument("--note", default="", help="a note kept with the version")
    push.set_defaults(func=lambda args: push_rules(args.file, who=args.who, note=args.note))
    listing = rules_sub.add_parser("list", help="the stored rules versions, the active one marked")
    listing.set_defaults(func=lambda args: list_rules())
    back = rules_sub.add_parser("rollback", help="re-activate a version (default: the previous)")
    back.add_argument("version", type=int, nargs="?", help="version number (default: previous)")
    back.add_argument("--who", help="who rolls back (default: $USER@hostname)")
    back.set_defaults(func=lambda args: rollback_rules(args.version, who=args.who))


def open_store(settings: Settings | None = None) -> RulesStore:
    """The store of the Redis a running engine uses; ConfigError without one."""
    settings = settings or from_env()
    if not settings.redis_url:
        raise ConfigError(
            "no Redis to keep rules in: set TETIK_REDIS_URL to the Redis the running engine "
            "uses (and TETIK_PREFIX if it has one)"
        )
    return RulesStore.from_url(settings.redis_url, settings.prefix)


def push_rules(
    path: str, who: str | None = None, note: str = "", settings: Settings | None = None
) -> int:
    """``tetik rules push``: exit 0 when stored (or unchanged), 1 for a bad file."""
    store = open_store(settings)
    with _reachable(store):
        try:
            version, created = store.push_or_keep(_read(path), path, who, note)
        except RulesError as exc:
            return _rejected(store, exc)
    if created:
        print(
            f"pushed version {version.version} (hash {version.hash}, "
            f"{_plural(version.journeys, 'journey')}) from {path}; "
            "running engines switch within a second"
        )
    else:
        same = f"active version {version.version} (hash {version.hash})"
        print(f"unchanged: {path} is {same}, not pushed again")
    return 0


def list_rules(settings: Settings | None = None) -> int:
    """``tetik rules list``: a table of versions and when the active one became so."""
    store = open_store(settings)
    with _reachable(store):
        versions, active, last = store.versions(), store.active_version(), store.history(1)
    if not versions:
        print(f"no rules versions under prefix {store.prefix!r}: `tetik rules push FILE` adds one")
        return 0
    print(_table(versions, active))
    if last:
        print(_since(last[0]))
    return 0


def rollback_rules(
    version: int | None = None, who: str | None = None, settings: Settings | None = None
) -> int:
    """``tetik rules rollback``: exit 0 with what is active now, 1 without a target."""
    store = open_store(settings)
    with _reachable(store):
        before = store.active_version()
        try:
            now = store.rollback(version, who)
        except RollbackError as exc:
            print(f"tetik rules rollback: {exc}", file=sys.stderr)
            return 1
    if now.version == before:
        print(f"version {now.version} (hash {now.hash}) is already active; nothing changed")
    else:
        print(
            f"version {now.version} (hash {now.hash}, {_plural(now.journeys, 'journey')}, "
            f"from {now.filename}) is active again, was {before}; "
            "running engines switch within a second"
        )
    return 0


@contextlib.contextmanager
def _reachable(store: RulesStore) -> Iterator[None]:
    """Turn a Redis failure into a ConfigError naming the server (one line, exit 2)."""
    try:
        yield
    except redis.RedisError as exc:
        where = store.client.get_connection_kwargs()
        address = f"{where.get('host', '?')}:{where.get('port', '?')}"
        raise ConfigError(f"Redis at {address} failed: {exc}") from None


def _read(path: str) -> bytes:
    """The file's bytes (so the hash is the one ``validate`` and ``replay`` print)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RulesError([f"{path}: cannot read the rules file ({exc.strerror or exc})"]) from None


def _rejected(store: RulesStore, exc: RulesError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    active = store.active_version()
    stays = "no version is active" if active is None else f"version {active} stays active"
    print(f"rules unchanged: {stays}", file=sys.stderr)
    return 1


def _table(versions: list[RulesVersion], active: int | None) -> str:
    """Aligned columns; ``*`` marks the active version."""
    header = ("VERSION", "ACTIVE", "HASH", "JOURNEYS", "WHO", "PUSHED (UTC)", "FILE", "NOTE")
    rows = [header] + [
        (
            str(v.version),
            "*" if v.version == active else "",
            v.hash,
            str(v.journeys),
            v.who,
            utc_iso(v.at),
            v.filename,
            v.note,
        )
        for v in versions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _since(entry: Activation) -> str:
    how = "pushed" if entry.action == "push" else f"rolled back from version {entry.previous}"
    return f"version {entry.version} active since {utc_iso(entry.at)} ({how} by {entry.who})"


def utc_iso(at: int) -> str:
    """Epoch ms as ``2024-05-01T10:00:00Z`` (seconds are enough for humans)."""
    return datetime.fromtimestamp(at / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- encoding ----------------------------------------------------------------


def _meta_json(version: RulesVersion) -> bytes:
    fields = dataclasses.asdict(version)
    del fields["version"], fields["text"]  # the hash field and the text hash hold them
    return orjson.dumps(fields)


def _version(number: int, meta: Any, text: str) -> RulesVersion:
    return RulesVersion(version=number, text=text, **orjson.loads(meta))


def _activation(raw: Any) -> Activation:
    return Activation(**orjson.loads(raw))


def _int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _bytes(raw: Any) -> bytes | None:
    """Redis replies as bytes whether or not the client decodes responses."""
    return raw.encode("utf-8") if isinstance(raw, str) else raw


def _text(raw: Any) -> str:
    """A stored rules text (bytes, or str from a decoding client) as str."""
    return raw if isinstance(raw, str) else bytes(raw or b"").decode("utf-8")


def _listing(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
