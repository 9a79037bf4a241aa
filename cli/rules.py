"""``tetik rules``: validate a file, and push, list, history and rollback its versions.

Only the command line lives here: parsing, printing and exit codes. The versions
themselves, the history and its checks are :mod:`flows.stores.rules`; the rules
file's compilation is :mod:`engine.rules.loader`. Exit codes: 0 done (or
unchanged), 1 a rejected file, a missing rollback target or a tampered history
(one line on stderr), 2 a configuration problem (a :class:`ConfigError`: no Redis,
Redis unreachable, ``--who`` given).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import redis

from engine.errors import ConfigError, RulesError
from flows.settings import Settings, from_env
from flows.stores.rules import (
    AUTHOR_ENV,
    Activation,
    HistoryCheck,
    RollbackError,
    RulesStore,
    RulesVersion,
    default_who,
)


def add_rules_commands(rules_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``validate``, ``push``, ``list``, ``history`` and ``rollback`` under
    ``tetik rules``."""
    validate = rules_sub.add_parser("validate", help="check a rules file")
    validate.add_argument("file")
    validate.set_defaults(func=_validate)
    push = rules_sub.add_parser("push", help="store a rules file as a new version and activate it")
    push.add_argument("file")
    push.add_argument("--who", help=argparse.SUPPRESS)  # refused: the author is TETIK_AUTHOR
    push.add_argument("--note", default="", help="a note kept with the version")
    push.set_defaults(func=lambda args: push_rules(args.file, note=args.note, flag=args.who))
    listing = rules_sub.add_parser("list", help="the stored rules versions, the active one marked")
    listing.set_defaults(func=lambda args: list_rules())
    past = rules_sub.add_parser("history", help="every activation, and whether it was tampered")
    past.set_defaults(func=lambda args: history_rules())
    back = rules_sub.add_parser("rollback", help="re-activate a version (default: the previous)")
    back.add_argument("version", type=int, nargs="?", help="version number (default: previous)")
    back.add_argument("--who", help=argparse.SUPPRESS)
    back.set_defaults(func=lambda args: rollback_rules(args.version, flag=args.who))


def _validate(args: argparse.Namespace) -> int:
    from flows.jobs.backtest import validate  # the compiler: only when asked

    return validate(args.file)


def refuse_who(flag: str | None) -> None:
    """ConfigError when ``--who`` was given: the author comes from the environment."""
    if flag is not None:
        raise ConfigError(
            f"--who is not accepted: the author is taken from {AUTHOR_ENV} (else your OS "
            f"user@host); run with {AUTHOR_ENV}=NAME instead"
        )


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
    path: str, note: str = "", settings: Settings | None = None, flag: str | None = None
) -> int:
    """``tetik rules push``: exit 0 when stored (or unchanged), 1 for a bad file."""
    refuse_who(flag)
    author = default_who()
    store = open_store(settings)
    with _reachable(store):
        try:
            version, created = store.push_or_keep(_read(path), path, author, note)
        except RulesError as exc:
            return _rejected(store, exc)
    signed = ", signed" if version.signature else ""
    if created:
        print(
            f"pushed version {version.version} (hash {version.hash}, "
            f"{_plural(version.journeys, 'journey')}{signed}) from {path} by {version.who}; "
            "running engines switch within a second"
        )
    else:
        same = f"active version {version.version} (hash {version.hash})"
        print(f"unchanged: {path} is {same}, not pushed again")
    return 0


def list_rules(settings: Settings | None = None) -> int:
    """``tetik rules list``: the versions, the active one's activation, the history check.

    Exit 1 when the history check finds tampering (said in one line on stderr).
    """
    store = open_store(settings)
    with _reachable(store):
        versions, active = store.versions(with_text=True), store.active_version()
        check = store.check_history()
    if not versions:
        print(f"no rules versions under prefix {store.prefix!r}: `tetik rules push FILE` adds one")
        return _verdict(check, quiet=True)
    print(_table(versions, active, store))
    if check.activations:
        print(_since(check.activations[-1]))
    return _verdict(check)


def history_rules(settings: Settings | None = None) -> int:
    """``tetik rules history``: every activation, oldest first, then the chain check."""
    store = open_store(settings)
    with _reachable(store):
        check = store.check_history()
    for entry in check.activations:
        print(_since(entry).replace(" active since ", " activated "))
    if not check.activations:
        print(f"no activations under prefix {store.prefix!r}")
    return _verdict(check, quiet=not check.activations)


def _verdict(check: HistoryCheck, *, quiet: bool = False) -> int:
    if not check.intact:
        print(f"tetik rules: {check.line()}", file=sys.stderr)
        return 1
    if not quiet:
        print(check.line())
    return 0


def rollback_rules(
    version: int | None = None, settings: Settings | None = None, flag: str | None = None
) -> int:
    """``tetik rules rollback``: exit 0 with what is active now, 1 without a target."""
    refuse_who(flag)
    author = default_who()
    store = open_store(settings)
    with _reachable(store):
        before = store.active_version()
        try:
            now = store.rollback(version, author)
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


def _signed(version: RulesVersion, store: RulesStore) -> str:
    """``ok``/``BAD``/``no`` with a secret to check; ``yes``/``no`` without one."""
    if store.secret is None:
        return "yes" if version.signature else "no"
    if not version.signature:
        return "no"
    return "BAD" if store.signature_problem(version) else "ok"


def _table(versions: list[RulesVersion], active: int | None, store: RulesStore) -> str:
    """Aligned columns; ``*`` marks the active version."""
    header = (
        "VERSION",
        "ACTIVE",
        "HASH",
        "SIGNED",
        "JOURNEYS",
        "WHO",
        "PUSHED (UTC)",
        "FILE",
        "NOTE",
    )
    rows = [header] + [
        (
            str(v.version),
            "*" if v.version == active else "",
            v.hash,
            _signed(v, store),
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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
