"""One line for humans on stderr: the progress and warnings of every job.

Rules of this interface: :func:`say` prefixes ``tetik:`` and flushes at once, so
lines from several processes interleave whole; stdout stays for what a command
prints as its result (JSON, tables), so it can be piped. Nothing here imports
Bytewax, Kafka or Redis: any module may use it.
"""

from __future__ import annotations

import sys

__all__ = ["say"]


def say(line: str) -> None:
    """Progress for humans goes to stderr, so stdout stays machine-readable."""
    print(f"tetik: {line}", file=sys.stderr, flush=True)
