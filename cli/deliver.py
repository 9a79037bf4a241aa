"""``tetik deliver`` and ``tetik onsite``: the command line of the delivery job.

Only parsing and printing live here; the job is :mod:`flows.jobs.deliver`, the
inboxes :mod:`channels.onsite`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import orjson

from cli.metrics import add_metrics_port
from engine.errors import ConfigError
from flows.report import say


def add_commands(sub: Any) -> None:
    """Register ``tetik deliver`` and ``tetik onsite`` on the top-level subparsers."""
    deliver = sub.add_parser(
        "deliver", help="deliver the engine's actions through channel adapters"
    )
    deliver.add_argument(
        "--config", help="channel config YAML (default: onsite inbox, rest JSONL on stdout)"
    )
    deliver.add_argument(
        "--group",
        default=None,
        help="consumer group (default $TETIK_DELIVER_GROUP, else tetik-deliver)",
    )
    deliver.add_argument(
        "--idle-exit", type=float, metavar="SECONDS", help="stop after this long without actions"
    )
    deliver.add_argument(
        "--actions-topic", help="topic to read (default $TETIK_ACTIONS_TOPIC, else actions)"
    )
    deliver.add_argument(
        "--dlq-topic",
        help="dead letters (default $TETIK_ACTIONS_DLQ_TOPIC, else actions.dlq)",
    )
    add_metrics_port(deliver)
    deliver.set_defaults(func=cmd_deliver)
    onsite = sub.add_parser("onsite", help="print a user's onsite inbox as JSON (newest first)")
    onsite.add_argument("user", help="identity key (user_id, else anon_id)")
    onsite.set_defaults(func=cmd_onsite)


def cmd_deliver(args: argparse.Namespace) -> int:
    """``tetik deliver``: run until SIGINT/SIGTERM (or ``--idle-exit``)."""
    # The channels, the job and Bytewax are imported when delivering, not for every command.
    from channels.config import default_config, load_config
    from flows.jobs.deliver import require_servers, run_deliver
    from flows.pipeline.source import stop_on_signals
    from flows.settings import from_env

    settings = from_env()
    settings = dataclasses.replace(
        settings,
        actions_topic=args.actions_topic or settings.actions_topic,
        actions_dlq_topic=args.dlq_topic or settings.actions_dlq_topic,
    )
    require_servers(settings)
    config = load_config(args.config) if args.config else default_config()
    group = args.group or settings.deliver_group
    say(f"delivering {settings.actions_topic} (group {group}; Ctrl-C stops)")
    run_deliver(
        settings,
        config=config,
        group=group,
        stop=stop_on_signals(),
        idle_exit=args.idle_exit,
        metrics_port=args.metrics_port or settings.metrics_port,
    )
    return 0


def cmd_onsite(args: argparse.Namespace) -> int:
    """``tetik onsite USER``: the inbox a storefront would show, as JSON."""
    from channels.onsite import read_inbox
    from flows.retry import connect
    from flows.settings import from_env

    settings = from_env()
    if not settings.redis_url:
        raise ConfigError("set TETIK_REDIS_URL to the Redis that `tetik deliver` writes inboxes to")
    client = connect(settings.redis_url)
    try:
        inbox = read_inbox(client, settings.keys, args.user)
    finally:
        client.close()
    sys.stdout.write(orjson.dumps(inbox, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
