"""Versioned rules in Redis: ``tetik rules push | list | history | rollback`` and the live switch.

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
  publishes the version number on ``{P}:rules:changed``. A crash leaves the
  whole activation or none of it. Concurrent pushes and rollbacks are serialised
  by WATCH on the active version, the sequence and the history (a loser retries).
* :meth:`RulesStore.rollback` without a version re-activates the version that was
  active before the current one (as ``kubectl rollout undo``: twice in a row
  toggles back); with a version it re-activates that one. Rolling back to the
  active version changes nothing. An unknown version, or nothing to go back to,
  raises :class:`RollbackError` (a :class:`~engine.errors.ConfigError`).

Who pushed (security):

* The author of a push or rollback is :func:`default_who`: ``$TETIK_AUTHOR``
  when set, else the OS account (``pwd``, by the process's uid) ``@`` the host
  name. The command line takes no author: ``--who`` is refused with a line
  saying to set ``TETIK_AUTHOR``. (The library's ``who=`` argument is for
  programs and tests.)

The history is append-only and tamper-evident:

* Activations go to a Redis Stream (``XADD``; entries cannot be edited in
  place). Each entry holds the activation's JSON, the previous entry's digest
  and its own digest over both: HMAC-SHA256 keyed with ``TETIK_RULES_SECRET``
  when it is set, else SHA-256. :meth:`RulesStore.check_history` (run by
  ``tetik rules list`` and ``tetik rules history``) recomputes the chain and
  says in one line what is wrong: an entry deleted (``XDEL``), the history
  deleted or rewritten, an entry forged, or the active version set outside
  tetik. Without a secret a deliberate rewrite of the whole chain goes
  unnoticed; with it only a removal of the newest entries does (nothing kept
  in the same Redis can prove what came last).
* A history kept by an older tetik in a Redis list is still read (first,
  oldest first) and is moved into the stream by the next push or rollback.

Signed pushes:

* With ``TETIK_RULES_SECRET`` set, a push stores ``signature``: HMAC-SHA256
  with that secret over the text, the filename, the author and the time
  (:func:`sign_version`). Engines with the secret set verify it:
  :meth:`RulesStore.active` raises :class:`RulesSignatureError` (one line; so
  ``tetik run`` refuses to start) and :meth:`RulesWatcher.poll` reports the
  version once and keeps the engine on the version it runs. A rollback to a
  version that fails the check is refused. Without the secret nothing is
  signed or checked. Whoever can write Redis can still re-activate an older
  correctly signed version; the history check flags that.

Redis keys (:class:`flows.stores.keys.RulesKeys`; ``P`` is the prefix). All
carry the deployment's hash tag ``{P}``, so on a Redis Cluster every
activation's WATCH, reads and MULTI/EXEC run on one slot; the channel carries
it too, since it is published inside the transaction::

    {P}:rules:seq      string  last version number given out (INCR)
    {P}:rules:meta     hash    version -> JSON {hash, who, at, journeys, filename, note, signature}
    {P}:rules:text     hash    version -> the rules file's bytes
    {P}:rules:by_hash  hash    hash (12 hex) -> first version with that text
    {P}:rules:active   string  the active version number (the one GET engines poll)
    {P}:rules:changes  string  change counter: +1 per activation
    {P}:rules:log      stream  {entry: JSON {version, who, at, action, previous}, prev, digest, alg}
    {P}:rules:history  list    an older tetik's history (read, then moved into {P}:rules:log)
    {P}:rules:changed  channel the newly active version number, on every activation
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import pwd
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
import redis
from redis.client import Pipeline

from engine.errors import ConfigError
from engine.rules.loader import load_rules
from flows.clock import Clock, wall_ms
from flows.report import say
from flows.retry import connect
from flows.stores.keys import Keys

RulesChange = Literal["push", "rollback"]  # what an activation did
HASH_LENGTH = 12
AUTHOR_ENV = "TETIK_AUTHOR"
SECRET_ENV = "TETIK_RULES_SECRET"
MAX_AUTHOR = 200
_SIGNED = "hmac-sha256"
_HASHED = "sha256"


class RollbackError(ConfigError):
    """A rollback has no target: an unknown version, or no earlier version."""


class RulesSignatureError(ConfigError):
    """The active version is unsigned or badly signed while TETIK_RULES_SECRET is set."""


def monotonic_ms() -> int:
    """A clock for intervals only (never goes back when the wall clock is set)."""
    return time.monotonic_ns() // 1_000_000


def default_who() -> str:
    """The author of a push or rollback: ``$TETIK_AUTHOR``, else ``os-user@hostname``.

    The OS user is the account of the process's uid (``pwd``), not ``$USER``.
    Raises ConfigError when ``TETIK_AUTHOR`` holds a control character or is
    longer than 200 characters.
    """
    author = os.environ.get(AUTHOR_ENV, "").strip()
    if not author:
        return f"{_os_user()}@{socket.gethostname()}"
    if len(author) > MAX_AUTHOR or not author.isprintable():
        raise ConfigError(
            f"{AUTHOR_ENV} must be one printable line of at most {MAX_AUTHOR} characters "
            "(e.g. TETIK_AUTHOR=ana@example.com)"
        )
    return author


def _os_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a container user without a passwd entry
        return f"uid{os.getuid()}"


def secret_from_env() -> bytes | None:
    """``TETIK_RULES_SECRET`` as bytes, or None when unset or empty."""
    value = os.environ.get(SECRET_ENV, "")
    return value.encode() if value else None


def sign_version(secret: bytes, text: bytes, filename: str, who: str, at: int) -> str:
    """Hex HMAC-SHA256 of a pushed version: its text, filename, author and time."""
    header = orjson.dumps(["tetik.rules.v1", filename, who, at])  # one line: no newline inside
    return hmac.new(secret, header + b"\n" + text, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class RulesVersion:
    """One pushed rules file. ``text`` is "" in :meth:`RulesStore.versions` listings.

    ``signature`` is the hex HMAC of :func:`sign_version` ("" when pushed
    without ``TETIK_RULES_SECRET``).
    """

    version: int
    hash: str
    who: str
    at: int
    journeys: int
    filename: str
    text: str
    note: str = ""
    signature: str = ""


@dataclasses.dataclass(frozen=True)
class Activation:
    """One entry of the history: ``version`` became active at ``at``."""

    version: int
    who: str
    at: int
    action: RulesChange
    previous: int | None = None


@dataclasses.dataclass(frozen=True)
class HistoryCheck:
    """What :meth:`RulesStore.check_history` found; ``problems`` empty when intact."""

    activations: list[Activation]
    problems: list[str]
    legacy: int = 0  # entries still in an older tetik's editable list
    how: str = "hash-chained"  # how far the chain could be checked

    @property
    def intact(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """One line for humans: the verdict, and how to act on it."""
        if self.problems:
            more = f" ({len(self.problems)} problems in all)" if len(self.problems) > 1 else ""
            return (
                f"rules history TAMPERED: {self.problems[0]}{more}; find out who else writes "
                "to this Redis and check the active version (the break stays on record)"
            )
        legacy = (
            f"; {self.legacy} older entries sit in an editable list until the next push"
            if self.legacy
            else ""
        )
        count = _plural(len(self.activations), "activation")
        return f"rules history intact: {count}, {self.how}{legacy}"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One stream entry of the history, as stored."""

    id: str
    entry: bytes
    prev: str
    digest: str
    alg: str


class RulesStore:
    """Rules versions of one prefix in one Redis database or Redis Cluster (see the
    module rules).

    ``secret`` signs pushes and the history and is checked on reads; None
    (the default) takes ``TETIK_RULES_SECRET`` from the environment, "" means
    none.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "tetik",
        clock: Clock = wall_ms,
        secret: str | bytes | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        if secret is None:
            self.secret = secret_from_env()
        else:
            self.secret = (secret.encode() if isinstance(secret, str) else secret) or None
        keys = Keys(prefix).rules
        self.seq_key, self.meta_key, self.text_key = keys.seq, keys.meta, keys.text
        self.hash_key, self.active_key = keys.by_hash, keys.active
        self.changes_key, self.history_key = keys.changes, keys.history
        self.log_key = keys.log
        self.channel = keys.changed

    @classmethod
    def from_url(cls, url: str, prefix: str = "tetik") -> RulesStore:
        """A store on the Redis (or ``redis+cluster://`` Redis Cluster) at ``url``."""
        return cls(connect(url), prefix)

    # -- reads ---------------------------------------------------------------

    def active_version(self) -> int | None:
        """The active version number, or None before the first push: one GET."""
        return _int(self.client.get(self.active_key))

    def active(self) -> RulesVersion | None:
        """The active version with its text, or None before the first push.

        With a secret, a version whose signature does not verify raises
        :class:`RulesSignatureError`.
        """
        number = self.active_version()
        found = None if number is None else self.get(number)
        if found is not None:
            self.verify(found)
        return found

    def get(self, version: int) -> RulesVersion | None:
        """A version with its text (one round trip), or None if unknown; not verified."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.meta_key, str(version))
        pipe.hget(self.text_key, str(version))
        meta, text = pipe.execute()
        if meta is None:
            return None
        return _version(version, meta, _text(text))

    def signature_problem(self, version: RulesVersion) -> str:
        """Why ``version`` may not run under this store's secret ("" when it may).

        ``version`` must carry its text. Always "" without a secret.
        """
        if self.secret is None:
            return ""
        if not version.signature:
            return (
                f"rules version {version.version} ({version.hash}) is not signed and "
                f"{SECRET_ENV} is set: push its file again with the secret set, or unset "
                f"{SECRET_ENV} to run unsigned rules"
            )
        expected = sign_version(
            self.secret, version.text.encode(), version.filename, version.who, version.at
        )
        if hmac.compare_digest(expected, version.signature):
            return ""
        return (
            f"rules version {version.version} ({version.hash}) has a bad signature: it was "
            f"signed with another {SECRET_ENV} or altered in Redis; push the file again "
            "with the right secret"
        )

    def verify(self, version: RulesVersion) -> None:
        """Raise :class:`RulesSignatureError` when :meth:`signature_problem` finds one."""
        problem = self.signature_problem(version)
        if problem:
            raise RulesSignatureError(problem)

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
        activations = _history(self.client, self.history_key, self.log_key, limit)
        return activations

    def check_history(self) -> HistoryCheck:
        """Recompute the history's chain (see the module rules): what is wrong, if anything."""
        legacy: list[Any] = self.client.lrange(self.history_key, 0, -1)
        entries = _stream(self.client.xrange(self.log_key))
        problems = _chain_problems(entries, self.secret)
        activations = [_activation(item) for item in legacy] + [
            _activation(e.entry) for e in entries
        ]
        active = self.active_version()
        if activations and active is not None and activations[-1].version != active:
            last = activations[-1].version
            problems.append(
                f"version {active} is active but the last activation in the history is "
                f"version {last}: the active version was set outside tetik"
            )
        if not activations and active is not None:
            problems.append(f"version {active} is active but the history is empty: it was deleted")
        return HistoryCheck(activations, problems, len(legacy), _how(entries, self.secret))

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
        text is the active version's (returned as is). With a secret, an active
        version that fails :meth:`verify` is never kept: a signed copy is pushed."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        rules = load_rules(data, filename)  # first: a bad file must write nothing
        author, at = who or default_who(), self.clock()
        signature = (
            "" if self.secret is None else sign_version(self.secret, data, filename, author, at)
        )
        draft = RulesVersion(
            version=0,
            hash=rules.source_hash[:HASH_LENGTH],
            who=author,
            at=at,
            journeys=len(rules.journeys),
            filename=filename,
            text=data.decode("utf-8"),
            note=note,
            signature=signature,
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
        """Run ``body`` under WATCH of the sequence, the active version and the history."""
        return self.client.transaction(
            body,
            self.seq_key,
            self.active_key,
            self.log_key,
            self.history_key,
            value_from_callable=True,
        )

    def _push_in(
        self, pipe: Pipeline, draft: RulesVersion, data: bytes
    ) -> tuple[RulesVersion, bool]:
        active = _int(pipe.get(self.active_key))
        if active is not None and _bytes(pipe.hget(self.text_key, str(active))) == data:
            kept = self._get_in(pipe, active)
            if not self.signature_problem(kept):
                return kept, False
        number = (_int(pipe.get(self.seq_key)) or 0) + 1
        same = _int(pipe.hget(self.hash_key, draft.hash))
        note = draft.note or ("" if same is None else f"same as version {same}")
        version = dataclasses.replace(draft, version=number, note=note)
        chain = self._chain_in(pipe)
        pipe.multi()
        pipe.incr(self.seq_key)  # the WATCH on seq makes this exactly ``number``
        pipe.hset(self.meta_key, str(number), _meta_json(version))
        pipe.hset(self.text_key, str(number), data)
        pipe.hsetnx(self.hash_key, version.hash, number)
        self._activate(pipe, chain, Activation(number, version.who, version.at, "push", active))
        return version, True

    def _rollback_in(self, pipe: Pipeline, version: int | None, who: str) -> int:
        active = _int(pipe.get(self.active_key))
        target = self._target(pipe, active, version)
        if target == active:
            return target  # already active: nothing to write, nobody to wake
        problem = self.signature_problem(self._get_in(pipe, target))
        if problem:
            raise RollbackError(f"cannot roll back: {problem}")
        chain = self._chain_in(pipe)
        pipe.multi()
        self._activate(pipe, chain, Activation(target, who, self.clock(), "rollback", active))
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
        last_two = _history(pipe, self.history_key, self.log_key, 2)
        if len(last_two) < 2:
            raise RollbackError(
                f"nothing to roll back to: version {active} is the only one that has been active"
            )
        return last_two[0].version

    def _chain_in(self, pipe: Pipeline) -> _Chain:
        """Read (under WATCH) what the next history entries chain onto."""
        last = _stream(pipe.xrevrange(self.log_key, count=1))
        legacy = [_bytes(item) or b"" for item in pipe.lrange(self.history_key, 0, -1)]
        return _Chain(last[0].digest if last else "", legacy)

    def _activate(self, pipe: Pipeline, chain: _Chain, entry: Activation) -> None:
        """Queue the writes that make ``entry.version`` active (inside MULTI)."""
        pipe.set(self.active_key, entry.version)
        pipe.incr(self.changes_key)
        prev = chain.prev
        for raw in [*chain.legacy, orjson.dumps(dataclasses.asdict(entry))]:
            prev = self._append(pipe, prev, raw)
        if chain.legacy:
            pipe.delete(self.history_key)  # moved into the stream
        # A cluster pipeline refuses pipe.publish(); PUBLISH itself is routed by its
        # channel, which carries the keys' tag, so it stays inside the transaction.
        pipe.execute_command("PUBLISH", self.channel, str(entry.version))  # type: ignore[no-untyped-call]

    def _append(self, pipe: Pipeline, prev: str, raw: bytes) -> str:
        alg = _HASHED if self.secret is None else _SIGNED
        digest = _digest(self.secret, alg, prev, raw)
        assert digest is not None  # a signed entry is only written with the secret
        pipe.xadd(self.log_key, {"entry": raw, "prev": prev, "digest": digest, "alg": alg})
        return digest

    def _get_in(self, pipe: Pipeline, version: int) -> RulesVersion:
        """A version read on the watching connection (it exists: never deleted)."""
        meta = pipe.hget(self.meta_key, str(version))
        return _version(version, meta, _text(pipe.hget(self.text_key, str(version))))


@dataclasses.dataclass(frozen=True)
class _Chain:
    prev: str  # the digest of the stream's last entry ("" when empty)
    legacy: list[bytes]  # entries of an older tetik's list, to move into the stream


def _history(client: Any, list_key: str, log_key: str, limit: int | None) -> list[Activation]:
    """Activations oldest first: the legacy list, then the stream; the last ``limit``."""
    if limit is None:
        stream = _stream(client.xrange(log_key))
    else:
        stream = _stream(client.xrevrange(log_key, count=limit))[::-1]
    missing = None if limit is None else limit - len(stream)
    legacy: list[Any] = []
    if missing is None or missing > 0:
        legacy = client.lrange(list_key, 0 if missing is None else -missing, -1)
    return [_activation(item) for item in legacy] + [_activation(e.entry) for e in stream]


def _stream(raw: Any) -> list[_Entry]:
    entries = []
    for sid, fields in raw:
        got = {_text(k): v for k, v in fields.items()}
        entries.append(
            _Entry(
                _text(sid),
                _bytes(got.get("entry")) or b"",
                _text(got.get("prev")),
                _text(got.get("digest")),
                _text(got.get("alg")),
            )
        )
    return entries


def _digest(secret: bytes | None, alg: str, prev: str, raw: bytes) -> str | None:
    """An entry's digest; None for a signed entry when there is no secret to check it."""
    data = b"tetik.rules.history.v1\n" + prev.encode() + b"\n" + raw
    if alg == _SIGNED:
        return None if secret is None else hmac.new(secret, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _how(entries: list[_Entry], secret: bytes | None) -> str:
    """How far a chain that checked out could be checked."""
    signed = sum(e.alg == _SIGNED for e in entries)
    if signed and secret is None:
        return f"hash links checked; set {SECRET_ENV} to check its signatures"
    if signed == len(entries) and entries:
        return f"every entry signed with {SECRET_ENV}"
    if signed:
        return (
            f"{signed} of {len(entries)} entries signed with {SECRET_ENV}, the older hash-chained"
        )
    hint = "" if secret is not None else f" (set {SECRET_ENV} to sign it)"
    return f"hash-chained{hint}"


def _chain_problems(entries: list[_Entry], secret: bytes | None) -> list[str]:
    problems: list[str] = []
    prev = ""
    for n, item in enumerate(entries, 1):
        where = f"entry {n} (stream id {item.id})"
        if item.prev != prev:
            lost = "the oldest activations were" if n == 1 else "an activation before it was"
            problems.append(f"{where} does not follow the one before it: {lost} deleted")
        if item.alg not in (_SIGNED, _HASHED):
            problems.append(f"{where} has an unknown digest kind {item.alg!r}: it was forged")
        expected = _digest(secret, item.alg, item.prev, item.entry)
        if expected is not None and not hmac.compare_digest(expected, item.digest):
            problems.append(f"{where} does not match its digest: it was altered or forged")
        if secret is not None and item.alg == _HASHED and n > 1 and entries[n - 2].alg == _SIGNED:
            problems.append(
                f"{where} is not signed though the one before it is: it was forged, or "
                f"written without {SECRET_ENV}"
            )
        prev = item.digest
    return problems


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
    * With a secret (``TETIK_RULES_SECRET``, see the module rules) a version
      that fails the signature check is never returned: ``report`` gets one
      line for it, once, and :attr:`current` stays on the version running.
    * Redis being unavailable is not an error here: :meth:`poll` returns None,
      :attr:`current` keeps the last version seen, and the next interval retries.
      Give the store a client with short socket timeouts so a dead Redis does not
      stall a batch.
    * ``clock`` returns milliseconds and only measures intervals (monotonic).
    """

    def __init__(
        self,
        store: RulesStore,
        interval_ms: int = 200,
        clock: Clock = monotonic_ms,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.interval_ms = interval_ms
        self.clock = clock
        self.report = report or say
        self._current: RulesVersion | None = None
        self._refused: int | None = None  # the active number whose signature failed
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
        if number is None or number == self._refused:
            return None
        if self._current is not None and number == self._current.version:
            return None
        found = self.store.get(number)
        if found is None:
            return None
        problem = self.store.signature_problem(found)
        if problem:
            self._refused = number
            running = "none" if self._current is None else str(self._current.version)
            self.report(f"refused {problem} (running version stays {running})")
            return None
        self._refused = None
        self._current = found
        return found


# -- encoding ----------------------------------------------------------------


def _meta_json(version: RulesVersion) -> bytes:
    fields = dataclasses.asdict(version)
    del fields["version"], fields["text"]  # the hash field and the text hash hold them
    return orjson.dumps(fields)


def _version(number: int, meta: Any, text: str) -> RulesVersion:
    fields = orjson.loads(meta)
    known = {f.name for f in dataclasses.fields(RulesVersion)}
    return RulesVersion(version=number, text=text, **{k: fields[k] for k in fields if k in known})


def _activation(raw: Any) -> Activation:
    return Activation(**orjson.loads(raw))


def _int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def _bytes(raw: Any) -> bytes | None:
    """Redis replies as bytes whether or not the client decodes responses."""
    return raw.encode("utf-8") if isinstance(raw, str) else raw


def _text(raw: Any) -> str:
    """A stored text (bytes, or str from a decoding client) as str."""
    return raw if isinstance(raw, str) else bytes(raw or b"").decode("utf-8")


def _listing(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
