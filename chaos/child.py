"""``tetik run`` as a child process of a chaos run: started, killed, watched, restarted.

Rules of this interface:

* The engine runs with its own topics and Redis prefix (``env``), its own
  recovery directory and a 0.5 s snapshot interval, logging to ``log_path``
  (appended across restarts). It dies with the chaos process.
* :meth:`Engine.kill` is a deliberate SIGKILL; :meth:`Engine.supervise`
  notices an exit nobody asked for, records it (code and the last log line),
  and starts the engine again after ``RESTART_DELAY_S``: a scenario goes on
  measuring loss and duplicates, and the exit counts against its verdict.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flows.servers.process import die_with_parent_preexec, stop_child

__all__ = ["Engine"]

RESTART_DELAY_S = 1.0
SNAPSHOT_S = "0.5"


class Engine:
    """One deployment of ``tetik run`` (see the module rules)."""

    def __init__(
        self,
        env: Mapping[str, str],
        workdir: Path,
        rules: Path,
        extra: Sequence[str] = (),
        name: str = "engine",
    ) -> None:
        self._env = dict(env)
        self._argv = [
            sys.executable, "-m", "cli.main", "run", "--rules", str(rules),
            "--recovery-dir", str(workdir / "recovery"), "--snapshot-interval", SNAPSHOT_S,
            *extra,
        ]  # fmt: skip
        self.log_path = workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._died_at: float | None = None
        self.starts: list[int] = []  # epoch ms of each start
        self.exits: list[str] = []  # exits nobody asked for: "code N: last log line"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent_preexec(),
            )
        self._died_at = None
        self.starts.append(time.time_ns() // 1_000_000)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, on purpose (not counted as an exit)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def supervise(self) -> None:
        """Record an unasked-for exit, and restart the engine once the delay has passed."""
        if self._proc is None:
            return
        code = self._proc.poll()
        if code is None:
            return
        if self._died_at is None:
            self._died_at = time.monotonic()
            self.exits.append(f"code {code}: {self.last_line()}")
        elif time.monotonic() - self._died_at >= RESTART_DELAY_S:
            self.start()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it will not stop; the exit code (None if not running)."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        code = stop_child(self._proc)
        self._proc = None
        return code

    def last_line(self) -> str:
        """The last non-empty line of the engine's log, cut to 200 characters."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:200] if lines else ""
