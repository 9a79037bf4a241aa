"""``--metrics-port``: the one option ``tetik run`` and ``tetik deliver`` share for
``/metrics``, ``/healthz`` and ``/readyz`` (:mod:`flows.metrics`)."""

from __future__ import annotations

import argparse

from engine.errors import ConfigError
from flows.settings import port_from


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port N`` (default: ``$TETIK_METRICS_PORT``, else none)."""
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="N",
        help="serve /metrics, /healthz and /readyz on port N (default $TETIK_METRICS_PORT)",
    )


def _port(text: str) -> int:
    try:
        return port_from(text, "--metrics-port")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
