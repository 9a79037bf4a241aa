"""Servers kept up between commands: ``tetik up`` and ``tetik down`` (SPEC section 6).

Without ``TETIK_REDIS_URL`` and ``TETIK_KAFKA_BOOTSTRAP`` every command starts its own
embedded servers and stops them when it ends, so nothing is shared and a restart of
``tetik run`` starts from empty servers. ``tetik up`` starts one valkey and one broker
(tansu, or ``--kafka apache``) in the background and prints the variables that point
the other commands at them; ``tetik down`` stops them.

Rules of the interface:

* The servers belong to one **keeper** process (``python -m flows.servers.up``), in a
  session of its own, so closing the terminal that ran ``tetik up`` leaves them up. It
  starts them with :func:`flows.servers.embedded.servers` (so they die with the keeper,
  however it dies) and then waits for SIGTERM or SIGINT, on which it stops them.
* Everything lives in one folder (``--dir``, default ``.tetik/up``): ``up.json`` (the
  keeper's pid and the endpoints, written once the servers answer), ``up.log`` (the
  keeper's lines) and ``recovery/`` (the ``TETIK_RECOVERY_DIR`` it exports, so a
  restarted ``tetik run`` resumes from its snapshots). :func:`stop` removes the folder:
  tansu keeps its log in memory, and keeping snapshots or Redis data past the log they
  reflect would make the next ``up`` resume from offsets that are gone.
* :func:`start` is idempotent: when the folder's keeper is alive it returns its
  endpoints rather than starting a second set.
* Failures raise :class:`~flows.servers.process.ServerStartError` with one line that
  says what to do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from flows.servers.embedded import KAFKA_BOOTSTRAP_ENV, REDIS_URL_ENV, servers
from flows.servers.process import ServerStartError

DEFAULT_DIR = Path(".tetik") / "up"
STATE_FILE = "up.json"
LOG_FILE = "up.log"
START_TIMEOUT_S = {"tansu": 60.0, "apache": 600.0}  # Apache Kafka's first start fetches jars
STOP_TIMEOUT_S = 30.0
RECOVERY_ENV = "TETIK_RECOVERY_DIR"


class Up(msgspec.Struct, frozen=True):
    """What ``up.json`` holds: the keeper and where its servers answer."""

    pid: int
    redis_url: str
    kafka_bootstrap: str
    kafka: str  # the broker kind: tansu or apache
    recovery_dir: str
    started: float  # the keeper's start, Unix seconds

    def exports(self) -> list[str]:
        """Shell lines that point the other commands at these servers."""
        return [
            f"export {REDIS_URL_ENV}={self.redis_url}",
            f"export {KAFKA_BOOTSTRAP_ENV}={self.kafka_bootstrap}",
            f"export {RECOVERY_ENV}={self.recovery_dir}",
        ]


def running(directory: Path) -> Up | None:
    """The servers kept up in ``directory``, or None when none are (or their keeper died)."""
    try:
        up = msgspec.json.decode((directory / STATE_FILE).read_bytes(), type=Up)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError):
        return None
    return up if _alive(up.pid) else None


def start(directory: Path = DEFAULT_DIR, kafka: str = "tansu") -> tuple[Up, bool]:
    """Start a keeper for ``directory`` unless one runs; its :class:`Up`, and whether it
    was started now (False: it was already up)."""
    current = running(directory)
    if current is not None:
        return current, False
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    keeper = _spawn_keeper(directory, kafka)
    deadline = time.monotonic() + START_TIMEOUT_S.get(kafka, 60.0)
    while time.monotonic() < deadline:
        up = running(directory)
        if up is not None:
            return up, True
        if keeper.poll() is not None:
            raise ServerStartError(
                f"tetik up: the servers did not start ({_last_line(directory)}); "
                f"see {directory / LOG_FILE}."
            )
        time.sleep(0.1)
    _signal(keeper.pid, signal.SIGKILL)
    raise ServerStartError(
        f"tetik up: the servers did not answer within {START_TIMEOUT_S.get(kafka, 60.0):.0f} s; "
        f"see {directory / LOG_FILE}."
    )


def stop(directory: Path = DEFAULT_DIR) -> Up | None:
    """Stop the keeper of ``directory`` (SIGTERM, then SIGKILL) and remove the folder;
    what was up, or None when nothing was."""
    up = running(directory)
    if up is not None:
        _signal(up.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(up.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(up.pid):
            _signal(up.pid, signal.SIGKILL)  # its servers die with it (PDEATHSIG)
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
    return up


def _spawn_keeper(directory: Path, kafka: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in (REDIS_URL_ENV, KAFKA_BOOTSTRAP_ENV)}
    with (directory / LOG_FILE).open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.servers.up", str(directory), kafka],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not stopped by the terminal's Ctrl+C or hang-up
            env=env,
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):  # a child of ours that exited: reap it
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _last_line(directory: Path) -> str:
    try:
        lines = (directory / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def keep(directory: Path, kafka: str) -> int:
    """The keeper: start the servers, write ``up.json``, wait for SIGTERM/SIGINT, stop."""
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    recovery = directory.resolve() / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    say = _say
    with servers(kafka_server=kafka, progress=say) as endpoints:
        up = Up(
            pid=os.getpid(),
            redis_url=endpoints.redis_url,
            kafka_bootstrap=endpoints.kafka_bootstrap,
            kafka=kafka,
            recovery_dir=str(recovery),
            started=time.time(),
        )
        temporary = directory / f"{STATE_FILE}.tmp"
        temporary.write_bytes(msgspec.json.encode(up))
        temporary.replace(directory / STATE_FILE)  # readers never see half a file
        say(f"up: {endpoints.redis_url} {endpoints.kafka_bootstrap}")
        while not stopping:
            time.sleep(0.2)  # (signal.pause could miss a signal that came just before)
        say(f"down: signal {stopping[0]}, stopping the servers")
    (directory / STATE_FILE).unlink(missing_ok=True)
    return 0


def _say(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}", flush=True)


if __name__ == "__main__":  # the keeper, spawned by start()
    try:
        sys.exit(keep(Path(sys.argv[1]), sys.argv[2]))
    except ServerStartError as error:
        _say(f"error: {str(error).splitlines()[0]}")
        sys.exit(1)
