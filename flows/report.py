"""One line for humans on stderr: the progress and warnings of every job.

Rules of this interface: :func:`say` logs one INFO line (``tetik: LINE`` in
plain text) and :func:`warn` one WARNING line, on the logger ``tetik``
through :mod:`flows.logs` (levels, JSON, redaction of addresses); a handler
flushes each line at once, so lines from several processes interleave whole;
stdout stays for what a command prints as its result (JSON, tables), so it
can be piped. Nothing here imports Bytewax, Kafka or Redis: any module may
use it.
"""

from __future__ import annotations

import logging

from flows import logs

__all__ = ["say", "warn"]

LOG = logging.getLogger("tetik")


def say(line: str) -> None:
    """Progress for humans goes to stderr, so stdout stays machine-readable."""
    logs.ensure()
    LOG.info(line)


def warn(line: str) -> None:
    """Something went wrong and the job goes on (a retry, a fault it rides out)."""
    logs.ensure()
    LOG.warning(line)
