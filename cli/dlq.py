"""``tetik dlq list`` and ``tetik dlq replay``: the command line of the events' dead letters.

Only parsing and printing live here; reading and re-sending is :mod:`flows.jobs.dlq`.
Both act on ``TETIK_KAFKA_BOOTSTRAP``'s ``TETIK_DLQ_TOPIC`` (``events.dlq``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from engine.errors import ConfigError
from flows.report import say


def add_dlq_commands(sub: Any) -> None:
    """Register ``tetik dlq list`` and ``tetik dlq replay`` on the top-level subparsers."""
    dlq = sub.add_parser("dlq", help="list the events' dead letters, or re-send chosen ones")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_sub.add_parser("list", help="each dead letter: offset, reason, the raw event")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    _add_filters(listing)
    listing.set_defaults(func=_list)
    again = dlq_sub.add_parser("replay", help="re-send chosen dead letters to the events topic")
    again.add_argument("--all", action="store_true", help="every dead letter")
    _add_filters(again)
    again.add_argument(
        "--restamp",
        action="store_true",
        help="shift their ts by one amount so the last is now, keeping the gaps",
    )
    again.set_defaults(func=_replay)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", metavar="SUBSTR", help="only those whose reason contains it")
    parser.add_argument(
        "--offset",
        action="append",
        default=[],
        metavar="[P:]N",
        help="only the one at offset N (of partition P, default 0); repeatable",
    )


def _chosen(args: argparse.Namespace) -> list[Any]:
    from flows.jobs.dlq import parse_offset, read_dead_letters, select
    from flows.settings import from_env

    try:
        offsets = [parse_offset(text) for text in args.offset]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return select(read_dead_letters(from_env()), args.reason, offsets)


def _list(args: argparse.Namespace) -> int:
    from flows.jobs.dlq import table

    letters = _chosen(args)
    if args.json:
        for letter in letters:
            sys.stdout.write(orjson.dumps(letter.to_json()).decode() + "\n")
        return 0
    if not letters:
        say("no dead letters" + (" match" if args.reason or args.offset else ""))
        return 0
    several = len({letter.partition for letter in letters}) > 1
    sys.stdout.write("\n".join(table(letters, partitions=several)) + "\n")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from flows.jobs.dlq import replay_dead_letters
    from flows.settings import from_env

    if not (args.all or args.reason or args.offset):
        raise ConfigError("tetik dlq replay: choose what to re-send: --all, --reason or --offset")
    letters = _chosen(args)
    settings = from_env()
    sent = replay_dead_letters(settings, letters, restamp_now=args.restamp)
    say(f"re-sent {sent:,} dead letter(s) to {settings.events_topic}")
    return 0
