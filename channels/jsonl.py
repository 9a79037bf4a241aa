"""The JSONL adapter: one SPEC section 4 JSON line per action, to a file or stdout.

Rules: ``path`` ``-`` is standard output (never closed by :meth:`close`);
any other path is opened for appending on the first send, so several runs
build one log. Each line is written and flushed whole, so a reader tailing
the file never sees half an action. A write error (disk full, no such
directory) is ``failed``. There is no deduplication: a repeated send writes
a second line with the same ``action_id``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

from channels.base import Attempt, Delivery, delivery
from engine.actions import Action, to_json


class JsonlChannel:
    """Appends actions to a JSONL file (``-``: stdout)."""

    name = "jsonl"

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._out: BinaryIO | None = None

    def send(self, action: Action) -> Delivery:
        try:
            out = self._open()
            out.write(to_json(action) + b"\n")
            out.flush()
        except OSError as exc:
            return delivery(action, self.name, Attempt("fatal", f"cannot write {self.path}: {exc}"))
        return delivery(action, self.name, Attempt("delivered", f"appended to {self.path}"))

    def _open(self) -> BinaryIO:
        if self._out is None:
            # Append mode: O_APPEND makes each whole-line write land at the end. The
            # file stays open across sends (closed by close()).
            path = Path(self.path)
            self._out = sys.stdout.buffer if self.path == "-" else path.open("ab")
        return self._out

    def close(self) -> None:
        if self._out is not None and self.path != "-":
            self._out.close()
        self._out = None
